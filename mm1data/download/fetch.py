"""The fetch stage: a block of distinct URLs in, one result per URL out, checkpointed as it goes.

:func:`fetch_block` is a Ray task (one per block of at most ``download.urls_per_task``
URLs): an event loop and a :class:`~mm1data.download.client.Client` fetch every URL of the block
concurrently (the client bounds requests per task and per host). Each body goes through the one
image decode (:func:`mm1data.ingest.base.describe_image`: validity, size, perceptual hashes, and
the square render of ``mm1data download --image-size`` from the same decode). Results, image bytes
included, stream into checkpoint parts (:class:`PartWriter`, Parquet named by the hash of their
rows, in one folder per plan partition) every ``download.checkpoint_rows`` results or
``download.checkpoint_s`` seconds, so a killed run loses at most the requests in flight; the task
returns the results without the bytes (it holds them only until their part is written).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mm1data.config import DownloadConfig, IngestConfig
from mm1data.download.client import Client, Fetched
from mm1data.ingest.base import BadImage, Render, describe_image
from mm1data.io.fs import fsspec_fs
from mm1data.runners.shuffle import partition_of
from mm1data.runners.workdir import parquet_options, put_whole
from mm1data.schemas import IMAGE_FIELDS

OK = "ok"
FAILED = "failed"

RESULT_FIELDS = [
    pa.field("k", pa.int64(), nullable=False),  # hash64(url): the partition key everywhere
    pa.field("url", pa.string(), nullable=False),
    pa.field("round", pa.int32(), nullable=False),  # 0: first fetch, +1 per --retry-failed refetch
    pa.field("status", pa.string(), nullable=False),  # "ok" or "failed"
    pa.field("reason", pa.string()),  # normalised failure reason; null when ok
    pa.field("detail", pa.string()),
    pa.field("retryable", pa.bool_()),
    pa.field("http_status", pa.int32()),
    pa.field("attempts", pa.int32()),
    pa.field("seconds", pa.float64()),
    pa.field("bytes", pa.int64()),  # body size as received
    pa.field("md5", pa.string()),  # of the body, when download.hash_type is md5
    pa.field("image_bytes", pa.int64()),  # size of the stored image (the render, if any)
]
RESULT = pa.schema([*RESULT_FIELDS, *IMAGE_FIELDS], metadata={"name": "UrlResult", "version": "1"})
"""A checkpointed result: one URL fetched once, its image columns as the record will carry them
(``image`` is the rendered JPEG when the phase renders; width, height and sha256 are the body's)."""

URL_ROW = pa.schema(
    [
        *RESULT_FIELDS,
        *[f for f in IMAGE_FIELDS if f.name != "image"],
        pa.field("fetched", pa.bool_(), nullable=False),  # by this run (else reused from the checkpoint)
        pa.field("sources", pa.list_(pa.struct([("source", pa.string()), ("refs", pa.int64())]))),
    ],
    metadata={"name": "UrlTable", "version": "1"},
)
"""The per-URL table: one row per distinct URL the records reference, with its (latest) result
and how many references each source file made to it."""

TODO = pa.schema(
    [
        pa.field("k", pa.int64(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        URL_ROW.field("sources"),
    ]
)
"""What the fetch stage reads: distinct URLs still without a (good enough) result."""


def judge(fetched: Fetched, ingest: IngestConfig, render: Render | None, md5: bool) -> dict:
    """The result columns for one fetched URL: the network outcome, then the one image decode.
    ``not_an_image`` is a body Pillow cannot identify as any image (an HTML page served as
    ``image/jpeg``); ``image_undecodable`` an image that does not decode whole."""
    data = fetched.data
    row = {
        "url": fetched.url,
        "http_status": fetched.http_status,
        "attempts": fetched.attempts,
        "seconds": round(fetched.seconds, 6),
        "bytes": len(data) if data is not None else None,
        "retryable": fetched.retryable,
    }
    if fetched.reason is not None:
        return {**row, "status": FAILED, "reason": fetched.reason, "detail": fetched.detail}
    try:
        info = describe_image(data, ingest, render)
    except BadImage as e:
        reason = "not_an_image" if e.detail.startswith("UnidentifiedImageError") else e.reason
        return {**row, "status": FAILED, "reason": reason, "detail": e.detail, "retryable": False}
    image = info.rendered if render is not None else data
    return {
        **row,
        "status": OK,
        "reason": None,
        "detail": None,
        "md5": hashlib.md5(data).hexdigest() if md5 else None,
        "image": image,
        "image_bytes": len(image),
        "image_sha256": info.sha256,
        "width": info.width,
        "height": info.height,
        "format": "jpeg" if render is not None else info.format,
        "phash": info.phash,
        "dhash": info.dhash,
    }


class PartWriter:
    """Buffers result rows and writes them as checkpoint parts under ``url``."""

    def __init__(self, url: str, every_rows: int, every_s: float) -> None:
        self.url = url.rstrip("/")
        self.fs, self.path = fsspec_fs(self.url)
        self.every_rows, self.every_s = every_rows, every_s
        self.rows: list[dict] = []
        self.last = time.monotonic()
        self.fs.makedirs(self.path, exist_ok=True)

    def add(self, row: dict) -> None:
        """Buffer ``row``; write a part when enough rows or time have gathered."""
        self.rows.append(row)
        if len(self.rows) >= self.every_rows or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one part, whole or not at all, named by its rows."""
        self.last = time.monotonic()
        if not self.rows:
            return
        rows, self.rows = sorted(self.rows, key=lambda r: (r["k"], r["url"], r["round"])), []
        table = pa.Table.from_pylist(rows, schema=RESULT)
        buf = io.BytesIO()
        pq.write_table(table, buf, **parquet_options(RESULT))
        name = hashlib.blake2b(buf.getvalue(), digest_size=12).hexdigest()
        put_whole(self.fs, f"{self.path}/part-{name}.parquet", buf.getvalue())


def fetch_block(
    todo: pa.Table,
    cfg: DownloadConfig,
    ingest: IngestConfig,
    render: Render | None,
    parts_url: str,
    partitions: int = 1,
) -> pa.Table:
    """Ray task: fetch every URL of a :data:`TODO` block, checkpoint the results under
    ``parts_url`` in the folder of the block's plan partition (of ``partitions``; so a folder holds
    about one partition's parts and readers list folders, not parts), return them as
    :data:`URL_ROW` rows (without the image bytes)."""
    if todo.num_rows == 0:
        return URL_ROW.empty_table()
    first = todo.column("k").slice(0, 1).to_numpy()
    folder = f"{parts_url.rstrip('/')}/p{partitions}-{int(partition_of(first, partitions)[0]):06d}"
    writer = PartWriter(folder, cfg.checkpoint_rows, cfg.checkpoint_s)
    md5 = cfg.hash_col is not None and cfg.hash_type == "md5"
    keys, urls, rounds = (todo.column(c).to_pylist() for c in ("k", "url", "round"))

    async def run() -> list[dict]:
        client = Client(cfg)

        async def one(i: int) -> dict:
            row = judge(await client.fetch(urls[i]), ingest, render, md5)
            row.update(k=keys[i], round=rounds[i])
            writer.add(row)
            return {**row, "image": None}  # (the bytes live in the checkpoint part only)

        try:
            return await asyncio.gather(*(one(i) for i in range(todo.num_rows)))
        finally:
            await client.close()

    rows = asyncio.run(run())
    writer.flush()
    return url_rows(pa.Table.from_pylist(rows, schema=RESULT), todo.column("sources"), fetched=True)


def url_rows(results: pa.Table, sources: pa.ChunkedArray | pa.Array, fetched: bool) -> pa.Table:
    """:data:`URL_ROW` rows of result rows (without their image bytes)."""
    n = results.num_rows
    cols = {f.name: results.column(f.name) for f in RESULT if f.name != "image"}
    cols["fetched"] = pa.array(np.full(n, fetched))
    cols["sources"] = sources
    return pa.table(cols).select(URL_ROW.names).cast(URL_ROW)
