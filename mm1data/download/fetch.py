"""The fetch stage: a batch of distinct URLs in, one result row per URL out, checkpointed as it goes.

:class:`FetchBatch` is the Ray Data callable class (one per worker: an event loop and a
:class:`~mm1data.download.client.Client` that live across batches). Each fetched body goes through
the one image decode path (:func:`mm1data.ingest.base.describe_image` and ``image_fields``) and,
when the URL carries an expected digest, a hash check. Results are streamed into checkpoint parts
under ``<work>/results/`` (Parquet, rows sorted by URL hash, file named by the hash of its URL
hashes) every ``checkpoint_rows`` results or ``checkpoint_s`` seconds, so a killed run loses at
most the requests still in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from mm1data.config import DownloadConfig, IngestConfig
from mm1data.download.client import Client, Fetched
from mm1data.ingest.base import BadImage, describe_image, image_fields
from mm1data.io.fs import fsspec_fs, is_s3
from mm1data.schemas import IMAGE_FIELDS

OK = "ok"
FAILED = "failed"

URL_RESULT = pa.schema(
    [
        pa.field("url_hash", pa.string(), nullable=False),
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
        *IMAGE_FIELDS,  # image bytes and what describe_image measured
    ],
    metadata={"name": "UrlResult", "version": "1"},
)
"""One row per distinct URL: what happened when it was fetched."""

TODO = pa.schema(
    [
        pa.field("url_hash", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("expected", pa.string()),  # "<sha256|md5>:<hex>" or null
        pa.field("round", pa.int32(), nullable=False),
    ]
)
"""What the fetch stage reads: distinct URLs still without a (good enough) result."""


def url_hash(url: str) -> str:
    """The key of a URL everywhere in the download phase: 128 bits of its sha256, hex."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def judge(fetched: Fetched, expected: str | None, ingest: IngestConfig) -> dict:
    """The result columns for one fetched URL: network outcome, hash check, then the one image
    decode path. ``not_an_image`` is a body Pillow cannot identify as any image (an HTML page
    served as ``image/jpeg``); ``image_undecodable`` an image that does not decode whole."""
    row = {
        "url": fetched.url,
        "http_status": fetched.http_status,
        "attempts": fetched.attempts,
        "seconds": round(fetched.seconds, 6),
        "bytes": len(fetched.data) if fetched.data is not None else None,
    }
    if fetched.reason is not None:
        return {**row, **failed(fetched.reason, fetched.detail, fetched.retryable)}
    data = fetched.data or b""
    if expected:
        algo, _, want = expected.partition(":")
        got = hashlib.new(algo, data).hexdigest()
        if got != want:
            return {**row, **failed("hash_mismatch", f"{algo} {got} != expected {want}")}
    try:
        info = describe_image(data, ingest)
    except BadImage as e:
        reason = "not_an_image" if e.detail.startswith("UnidentifiedImageError") else e.reason
        return {**row, **failed(reason, e.detail)}
    return {
        **row,
        "status": OK,
        "reason": None,
        "detail": None,
        "retryable": False,
        **image_fields(data, info),
    }


def failed(reason: str, detail: str | None, retryable: bool = False) -> dict:
    """Result columns of a failure."""
    return {"status": FAILED, "reason": reason, "detail": detail, "retryable": retryable}


class PartWriter:
    """Buffers result rows and writes them as checkpoint parts under ``url``."""

    def __init__(self, url: str, every_rows: int, every_s: float) -> None:
        self.url = url.rstrip("/")
        self.fs, self.path = fsspec_fs(self.url)
        self.every_rows = every_rows
        self.every_s = every_s
        self.rows: list[dict] = []
        self.last = time.monotonic()
        self.fs.makedirs(self.path, exist_ok=True)

    def add(self, row: dict) -> None:
        """Buffer ``row``; write a part when enough rows or time have gathered."""
        self.rows.append(row)
        if len(self.rows) >= self.every_rows or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one part (atomically: temp file, then rename)."""
        self.last = time.monotonic()
        if not self.rows:
            return
        rows, self.rows = sorted(self.rows, key=lambda r: (r["url_hash"], r["round"])), []
        name = hashlib.sha256("".join(f"{r['url_hash']}{r['round']}" for r in rows).encode()).hexdigest()
        buf = io.BytesIO()
        codecs = {f.name: "zstd" for f in URL_RESULT}
        codecs["image"] = "none"  # JPEG/PNG/WebP bytes do not compress: spare the CPU
        pq.write_table(pa.Table.from_pylist(rows, schema=URL_RESULT), buf, compression=codecs)
        final = f"{self.path}/part-{name[:24]}.parquet"
        if is_s3(self.url):  # an S3 PUT is atomic
            self.fs.pipe_file(final, buf.getvalue())
            return
        tmp = f"{self.path}/.tmp-{uuid.uuid4().hex}"
        self.fs.pipe_file(tmp, buf.getvalue())
        self.fs.mv(tmp, final)


URL_TABLE = pa.schema([f for f in URL_RESULT if f.name != "image"], metadata={"name": "UrlTable"})
"""The per-URL result table: :data:`URL_RESULT` without the image bytes (they are in the checkpoint)."""


class FetchBatch:
    """Ray Data callable class: fetch a batch of :data:`TODO` rows, checkpoint the results,
    return their :data:`URL_TABLE` rows."""

    def __init__(self, cfg: DownloadConfig, ingest: IngestConfig, parts_url: str) -> None:
        self.cfg = cfg
        self.ingest = ingest
        self.loop = asyncio.new_event_loop()
        self.client = Client(cfg)
        self.writer = PartWriter(parts_url, cfg.checkpoint_rows, cfg.checkpoint_s)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.loop.run_until_complete(self.run(batch))

    async def run(self, batch: pa.Table) -> pa.Table:
        """Fetch every URL of ``batch`` concurrently (the client bounds the concurrency)."""
        cols = {name: batch.column(name).to_pylist() for name in TODO.names}

        async def one(i: int) -> dict:
            fetched = await self.client.fetch(cols["url"][i])
            row = judge(fetched, cols["expected"][i], self.ingest)
            row.update(url_hash=cols["url_hash"][i], round=cols["round"][i])
            self.writer.add(row)
            return {k: v for k, v in row.items() if k != "image"}

        done = await asyncio.gather(*(one(i) for i in range(batch.num_rows)))
        self.writer.flush()
        self.client.hosts.clear()  # every request has finished: forget the per-host gates
        return pa.Table.from_pylist(done, schema=URL_TABLE)

    def __del__(self) -> None:
        try:
            self.loop.run_until_complete(self.client.close())
            self.loop.close()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass
