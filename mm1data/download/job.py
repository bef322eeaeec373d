"""``mm1data download``: URL tables in, WebDataset shards of img2dataset's layout out.

It runs the same phases as a build's start, through the same executor: :class:`IngestPhase`
reads the tables (every row a pending pair, or an ingest reject), :class:`DownloadPhase` fetches
(``--image-size`` renders the square JPEG from the one decode, as img2dataset resizes), and
:class:`ShardsPhase` writes, under ``--output``:

- ``NNNNN.tar``: kept samples as ``<key>.jpg|png|webp`` (the fetched bytes, or the render),
  ``<key>.txt`` (the caption) and ``<key>.json`` (key, url, caption, width, height, sha256 of the
  body as fetched); keys are the shard number then the row's place in it, in input order (as
  img2dataset's), shard = the row's index in the input (files in order) // ``--shard-size``;
- ``NNNNN.parquet``: *every* input row of the shard, kept or not, with its status and reason;
- ``urls/part-*.parquet``: the per-URL table (one row per distinct URL); ``rejects/``, ``stats.json``;
- ``_work/``: the checkpoints, the URL-level results among them, that a rerun resumes from.

The shards are functions of the input rows and the URL results only, so a rerun (after a crash,
or with ``--retry-failed``) writes the same bytes for the same results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mm1data.config import DownloadConfig, IngestConfig, RayConfig, Recipe, Sources, SourceSpec, to_dict
from mm1data.errors import UsageError
from mm1data.io.fs import fsspec_fs
from mm1data.runners.executor import Context, Data, Output, Phase
from mm1data.runners.shuffle import cogroup, hash64, mix64, partitions_for, sum_counts
from mm1data.schemas import CAPTION_PAIR

EXT = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}
TABLE_FORMATS = ("parquet", "csv", "tsv", "jsonl")

ROW_STATUS = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("id", pa.string()),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string()),  # "success" or "failed"
        pa.field("stage", pa.string()),  # ingest (row unusable) or download
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("width", pa.int32()),  # of the image as fetched
        pa.field("height", pa.int32()),
        pa.field("image_sha256", pa.string()),  # of the body as fetched
        pa.field("source", pa.string()),
        pa.field("offset", pa.int64()),
    ],
    metadata={"name": "DownloadRow", "version": "1"},
)
"""The per-row table of ``mm1data download``: every input row, kept or not."""

SHARD_OUT = pa.schema(
    [
        pa.field("shard", pa.int64()),
        pa.field("rows", pa.int64()),
        pa.field("kept", pa.int64()),
        pa.field("tar_sha256", pa.string()),
    ]
)
"""What :class:`ShardsPhase` reports per shard written."""

ROW_COLUMNS = [
    "id",
    "url",
    "captions",
    "lineage",
    "reject",
    "image",
    "image_sha256",
    "width",
    "height",
    "format",
]
ROW_IN = pa.schema([CAPTION_PAIR.field(c) for c in ROW_COLUMNS])
KEYED = (
    ROW_IN.append(pa.field("shard", pa.int64()))
    .append(pa.field("index", pa.int64()))
    .append(pa.field("_s", pa.int64()))
)


def all_rows(data: Data, stream: str, columns: list[str]):
    """Every row of ``stream`` that entered, once: the kept rows of its last output and the rejected
    rows of each of its outputs (each phase passes on only the rows the one before kept)."""
    parts = [data.kept(stream, columns)]
    for stored in data.history:
        if stored.output.name == stream and stored.rejected:
            parts.append(stored.read(columns, rows="rejected"))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def rows_per_source(table: pa.Table) -> pa.Table:
    """(source, rows) counts of a batch."""
    sources = pc.struct_field(table.column("lineage"), "source")
    t = (
        pa.table({"key": sources, "n": np.ones(table.num_rows, np.int64)})
        .group_by("key", use_threads=False)
        .aggregate([("n", "sum")])
    )
    return pa.table({"key": t.column("key"), "n": t.column("n_sum")})


def assign_shards(table: pa.Table, starts: dict[str, int], shard_size: int) -> pa.Table:
    """Rows with ``shard`` and ``index`` (the row's place in the input: the rows of the files before
    its file, plus its offset) and the shard's partition key ``_s``."""
    table = table.select(ROW_COLUMNS).cast(ROW_IN)
    lineage = table.column("lineage")
    sources = pc.struct_field(lineage, "source").to_pylist()
    index = np.array([starts[s] for s in sources], np.int64) + pc.struct_field(lineage, "offset").to_numpy(
        zero_copy_only=False
    )
    shard = index // shard_size
    return (
        table.append_column("shard", pa.array(shard))
        .append_column("index", pa.array(index))
        .append_column("_s", pa.array(mix64(shard)))
    )


def sample_key(shard: int, index: int, shard_size: int) -> str:
    """img2dataset's sample key: five digits of shard, then the row's place in the shard."""
    digits = len(str(shard_size - 1))
    return f"{shard:05d}{index % shard_size:0{digits}d}"


def write_shards(parts: dict[str, pa.Table], output: str, shard_size: int) -> pa.Table:
    """cogroup fn (by shard): ``NNNNN.tar`` (kept rows) and ``NNNNN.parquet`` (every row) per shard
    of this partition; returns :data:`SHARD_OUT` rows."""
    from mm1data.runners.workdir import put_whole
    from mm1data.shards.writer import tar_bytes

    table = parts["rows"]
    if table.num_rows == 0:
        return SHARD_OUT.empty_table()
    order = pc.sort_indices(
        table.select(["shard", "index"]), [("shard", "ascending"), ("index", "ascending")]
    )
    order = order.to_numpy()
    cols = {c: table.column(c).to_pylist() for c in ROW_COLUMNS if c != "image"}
    images = table.column("image")
    fs, root = fsspec_fs(output)
    shards = table.column("shard").to_numpy()[order]
    bounds = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1], True])
    index = table.column("index").to_numpy()

    def samples(shard: int, rows: list[int], status: list[dict]) -> Iterator[tuple[str, dict]]:
        """The kept rows' samples, one at a time (the tar is the only whole copy of the images);
        every row's status appended to ``status``."""
        for i in rows:
            key = sample_key(shard, int(index[i]), shard_size)
            rej = cols["reject"][i]
            caption = cols["captions"][i][0]["text"] if cols["captions"][i] else None
            url, fmt = cols["url"][i], cols["format"][i]
            lin = cols["lineage"][i] or {}
            status.append(
                {
                    "key": key,
                    "id": cols["id"][i],
                    "url": url,
                    "caption": caption,
                    "status": "success" if rej is None else "failed",
                    **{k: (rej or {}).get(k) for k in ("stage", "reason", "detail")},
                    "width": cols["width"][i],
                    "height": cols["height"][i],
                    "image_sha256": cols["image_sha256"][i] if rej is None else None,
                    "source": lin.get("source"),
                    "offset": lin.get("offset"),
                }
            )
            if rej is not None:
                continue
            meta = {
                "key": key,
                "url": url,
                "caption": caption,
                "width": cols["width"][i],
                "height": cols["height"][i],
                "sha256": cols["image_sha256"][i],
                "status": "success",
            }
            members = {
                EXT.get(fmt or "", fmt or "bin"): images[i].as_buffer().to_pybytes(),
                "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode(),
            }
            if caption is not None:
                members["txt"] = caption.encode()
            yield key, members

    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        shard, status = int(shards[a]), []
        tar, _ = tar_bytes(samples(shard, order[a:b].tolist(), status))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(status, schema=ROW_STATUS), buf, compression="zstd")
        put_whole(fs, f"{root}/{shard:05d}.parquet", buf.getvalue())
        put_whole(fs, f"{root}/{shard:05d}.tar", tar)
        kept = sum(r["status"] == "success" for r in status)
        out.append(
            {"shard": shard, "rows": len(status), "kept": kept, "tar_sha256": hashlib.sha256(tar).hexdigest()}
        )
    return pa.Table.from_pylist(out, schema=SHARD_OUT)


def _with_url_key(table: pa.Table) -> pa.Table:
    kept = table.filter(pc.is_null(table.column("reject")))
    return kept.append_column("k", pa.array(hash64(kept.column("url").to_pylist()), pa.int64()))


def _rejected_rows(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_valid(table.column("reject")))


class ShardsPhase(Phase):
    """Every caption row into img2dataset-layout shards (see the module doc); ``sources`` are the
    input files in order (a row's index counts the rows of the files before its own). ``results``
    (a path in the work folder): the kept records carry no bytes, they come from the download
    phase's results there, joined by URL first."""

    name = "shards"
    outputs = (Output("written", None, SHARD_OUT),)

    def __init__(
        self, sources: list[str], shard_size: int, cfg: DownloadConfig, results: tuple[str, ...] | None = None
    ) -> None:
        self.sources, self.shard_size, self.cfg, self.results = sources, shard_size, cfg, results

    def fingerprint(self) -> Any:
        return [self.sources, self.shard_size, self.results is not None]

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        from mm1data.download.phase import FILL_COLUMNS, FILL_RESULT, attach_images, read_parts

        lineage = all_rows(data, "caption", ["lineage"])
        counts = sum_counts(lineage.map_batches(rows_per_source, batch_format="pyarrow", batch_size=None))
        starts, total = {}, 0
        for source in self.sources:
            starts[source], total = total, total + counts.get(source, 0)
        rows = all_rows(data, "caption", ROW_COLUMNS).map_batches(
            assign_shards, fn_args=(starts, self.shard_size), batch_format="pyarrow", batch_size=None
        )
        image_bytes = ctx.info.get("download", {}).get("image_bytes", 0)
        parts = max(
            partitions_for(total, self.cfg.rows_per_partition),
            partitions_for(image_bytes, self.cfg.bytes_per_partition),
        )
        if self.results is not None:
            rows = rows.materialize()  # (no bytes: used twice)
            results = read_parts(ctx.work.url(*self.results), FILL_COLUMNS, FILL_RESULT)
            kept = cogroup(
                {"rows": rows.map_batches(_with_url_key, batch_format="pyarrow"), "results": results},
                {"rows": "k", "results": "k"},
                parts,
                attach_images,
                (),
                {"rows": KEYED.append(pa.field("k", pa.int64())), "results": FILL_RESULT},
            )
            rows = kept.union(rows.map_batches(_rejected_rows, batch_format="pyarrow"))
        written = cogroup(
            {"rows": rows}, {"rows": "_s"}, parts, write_shards, (ctx.root, self.shard_size), {"rows": KEYED}
        )
        ctx.info[self.name] = {"rows": total, "shards": -(-total // self.shard_size)}
        return {"written": written}


def check_columns(path: str, fmt: str, cfg: DownloadConfig) -> None:
    """Fail fast (``UsageError``) when a configured URL, caption or hash column is not in the table."""
    from mm1data.ingest.captions import table_columns

    cols = table_columns(path, fmt)
    given = (("--url-col", cfg.url_col), ("--caption-col", cfg.caption_col), ("--hash-col", cfg.hash_col))
    for flag, name in given:
        if name and name not in cols:
            raise UsageError(f"{path}: no column {name!r} ({flag}); columns: {', '.join(cols)}")


def download_phases(
    inputs: list[str],
    cfg: DownloadConfig,
    ingest: IngestConfig,
    shard_size: int = 10_000,
    image_size: int | None = None,
    jpeg_quality: int = 95,
) -> list[Phase]:
    """The phases of ``mm1data download``; fails fast on a bad input, column or size."""
    from mm1data.config import reader_config
    from mm1data.download.phase import DownloadPhase
    from mm1data.ingest.base import Render
    from mm1data.ingest.job import IngestPhase, plan_streams

    if shard_size < 1 or (image_size is not None and image_size < 8) or not 1 <= jpeg_quality <= 100:
        raise UsageError("--shard-size must be >= 1, --image-size >= 8 and --jpeg-quality in 1..100")
    cfg = dataclasses.replace(cfg, enabled=True)
    recipe = Recipe(
        sources=Sources(captions=tuple(SourceSpec(path=p) for p in inputs)), ingest=ingest, download=cfg
    )
    units = plan_streams(recipe)
    for u in units["caption"]:
        if u.format not in TABLE_FORMATS:
            raise UsageError(f"not a URL table (Parquet, CSV, TSV or JSON lines): {u.path}")
        check_columns(u.path, u.format, cfg)
    render = Render(image_size, jpeg_quality) if image_size else None
    download = DownloadPhase(cfg, ingest, render=render, urls_to="urls", carry_bytes=False)
    return [
        IngestPhase(recipe.sources, reader_config(recipe), units),
        download,
        ShardsPhase([u.path for u in units["caption"]], shard_size, cfg, results=download.results),
    ]


def run_download(
    inputs: list[str],
    output: str,
    cfg: DownloadConfig,
    ingest: IngestConfig | None = None,
    shard_size: int = 10_000,
    image_size: int | None = None,
    jpeg_quality: int = 95,
    ray: RayConfig | None = None,
    log: Any = None,
) -> dict:
    """Download the images of the URL tables ``inputs`` into ``output`` (see the module doc);
    returns (and writes) the stats: rows read, kept, rejected by reason, the download phase's
    counts and the shards written."""
    from mm1data.runners.executor import Executor

    ingest = ingest or IngestConfig()
    ray = ray or RayConfig()
    phases = download_phases(inputs, cfg, ingest, shard_size, image_size, jpeg_quality)
    fs, root = fsspec_fs(output)
    if fs.exists(root):  # shards of an earlier run with another shard size must not linger
        for old in fs.glob(f"{root}/[0-9]*.tar") + fs.glob(f"{root}/[0-9]*.parquet"):
            fs.rm(old)

    def amend(stats: dict, data: Data) -> dict:
        s = stats["streams"]["caption"]
        reasons: dict[str, int] = {}
        for key, n in s["rejected_by_reason"].items():
            reasons[key] = reasons.get(key, 0) + n
        stats.update(
            read=s["read"],
            kept=s["kept"],
            rejected=s["rejected"],
            rejected_by_reason=dict(sorted(reasons.items())),
            config=to_dict(cfg),
            image_size=image_size,
            ray_start_s=stats["timings_s"].get("ray_start"),
        )
        return stats

    return Executor(output, ray.address, ray.num_cpus, log).run(phases, amend=amend).stats


__all__ = ["ROW_STATUS", "ShardsPhase", "download_phases", "run_download"]
