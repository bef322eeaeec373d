"""``mm1data download``: URL tables in, img2dataset-layout WebDataset shards out; and the hook that
runs the download phase inside ``mm1data ingest`` / ``build``.

Output of ``mm1data download`` under ``--output``:

- ``NNNNN.tar``: kept samples as ``<key>.jpg|png|webp`` (the fetched bytes, or a ``--image-size``
  center crop as JPEG), ``<key>.txt`` (the caption) and ``<key>.json`` (key, url, caption, size,
  sha256); keys are ``NNNNN`` + the row's index in its shard, in input order (as img2dataset's);
- ``NNNNN.parquet``: every input row of the shard, kept or not, with its status and reason;
- ``urls/*.parquet``: the per-URL result table (one row per distinct URL);
- ``stats.json``: rows read / kept / rejected by reason, and the download phase's counts;
- ``_work/download/``: the URL-level checkpoint a rerun resumes from.

The tars and per-row Parquet files are functions of the input rows and the URL results only, so
a rerun (after a crash, or with ``--retry-failed``) writes the same bytes for the same results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mm1data.config import DownloadConfig, IngestConfig, Recipe, Sources, SourceSpec, to_dict
from mm1data.errors import UsageError
from mm1data.io.fs import fsspec_fs
from mm1data.schemas import CAPTION_PAIR

WORK = "_work/download"
EXT = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}

ROW_STATUS = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("id", pa.string()),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string()),  # "success" or "failed"
        pa.field("stage", pa.string()),  # ingest (row unreadable) or download
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("width", pa.int32()),  # of the image as fetched
        pa.field("height", pa.int32()),
        pa.field("image_sha256", pa.string()),
        pa.field("source", pa.string()),
        pa.field("offset", pa.int64()),
    ]
)
"""The per-row table of ``mm1data download``: every input row, kept or not."""

SHARD_OUT = pa.schema(
    [
        pa.field("shard", pa.int64()),
        pa.field("rows", pa.int64()),
        pa.field("kept", pa.int64()),
        pa.field("tar_sha256", pa.string()),
        pa.field("reasons", pa.string()),  # JSON {stage/reason: n}
    ]
)


def run_download_phase(streams: dict, recipe: Recipe, output: str) -> dict:
    """The hook for ``ingest`` / ``build``: when ``recipe.download`` is enabled, fetch the pending
    images of ``streams`` (checkpoints in ``OUTPUT/_work/download``), write the per-URL table to
    ``OUTPUT/download/urls/`` and the phase's stats to ``OUTPUT/download/stats.json``, and return
    the filled streams; otherwise return ``streams`` unchanged."""
    from mm1data.download.phase import download_phase

    if not recipe.download.enabled:
        return streams
    root = output.rstrip("/")
    out, urls, stats = download_phase(streams, recipe.download, recipe.ingest, f"{root}/{WORK}")
    _write_url_table(urls, f"{root}/download/urls")
    fs, path = fsspec_fs(f"{root}/download/stats.json")
    fs.pipe_file(path, (json.dumps(stats, indent=2) + "\n").encode())
    return out


def _write_url_table(urls: Any, url: str) -> None:
    """The per-URL table as Parquet parts under ``url`` (replacing an earlier one)."""
    from mm1data.io.fs import arrow_fs

    fs, path = fsspec_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    afs, apath = arrow_fs(url)
    urls.write_parquet(apath, filesystem=afs, min_rows_per_file=100_000)


def check_columns(path: str, fmt: str, cfg: DownloadConfig) -> None:
    """Fail fast (``UsageError``) when a configured URL or caption column is not in the table."""
    from mm1data.ingest.captions import table_columns

    cols = table_columns(path, fmt)
    given = (("--url-col", cfg.url_col), ("--caption-col", cfg.caption_col), ("--hash-col", cfg.hash_col))
    for flag, name in given:
        if name and name not in cols:
            raise UsageError(f"{path}: no column {name!r} ({flag}); columns: {', '.join(cols)}")


def row_counts(table: pa.Table) -> pa.Table:
    """Rows per source file in a batch: (source, rows)."""
    counts = Counter(lin["source"] for lin in table.column("lineage").to_pylist())
    return pa.table({"source": list(counts), "rows": list(counts.values())})


def assign_shards(table: pa.Table, starts: dict[str, int], shard_size: int) -> pa.Table:
    """Add ``shard`` and ``key`` (img2dataset style: shard digits then the index in the shard),
    from each row's place in the input: the rows before its file plus its offset."""
    digits = len(str(shard_size - 1))
    index = [starts[lin["source"]] + lin["offset"] for lin in table.column("lineage").to_pylist()]
    shards = [i // shard_size for i in index]
    keys = [f"{s:05d}{i % shard_size:0{digits}d}" for s, i in zip(shards, index, strict=True)]
    return table.append_column("shard", pa.array(shards, pa.int64())).append_column("key", pa.array(keys))


def resize_batch(table: pa.Table, size: int, quality: int) -> pa.Table:
    """Kept rows' images as ``size``² center-cropped JPEGs (``mm1data.tokens.render.square_jpeg``,
    the build's own renderer); an image that fails is rejected ``image_undecodable``. Width and
    height stay those of the image as fetched."""
    from mm1data.tokens.render import ImageError, square_jpeg

    images = table.column("image").to_pylist()
    formats = table.column("format").to_pylist()
    rejects = table.column("reject").to_pylist()
    for i, (data, rej) in enumerate(zip(images, rejects, strict=True)):
        if rej is None and data is not None:
            try:
                images[i], formats[i] = square_jpeg(data, size, quality), "jpeg"
            except ImageError as e:
                images[i] = None
                rejects[i] = {"stage": "download", "reason": "image_undecodable", "detail": str(e),
                              "score": None, "duplicate_of": None}  # fmt: skip
    for name, values in (("image", images), ("format", formats), ("reject", rejects)):
        idx = table.schema.get_field_index(name)
        table = table.set_column(idx, table.schema.field(idx), pa.array(values, table.schema.field(idx).type))
    return table


def write_shards(block: pa.Table, output: str) -> pa.Table:
    """One shuffle partition (whole shards) → ``NNNNN.tar`` + ``NNNNN.parquet`` per shard."""
    from mm1data.shards.writer import tar_bytes

    fs, root = fsspec_fs(output)
    out = []
    block = block.sort_by([("shard", "ascending"), ("key", "ascending")])
    shards = block.column("shard").to_pylist()
    rows = block.to_pylist()
    start = 0
    while start < len(rows):
        end = start
        while end < len(rows) and shards[end] == shards[start]:
            end += 1
        shard, samples, status = shards[start], [], []
        for row in rows[start:end]:
            rej = row["reject"]
            caption = row["captions"][0]["text"] if row["captions"] else None
            data, ext = row["image"], EXT.get(row["format"] or "", row["format"])
            if rej is None:
                meta = {
                    "key": row["key"],
                    "url": row["url"],
                    "caption": caption,
                    "width": row["width"],
                    "height": row["height"],
                    "sha256": row["image_sha256"],
                    "status": "success",
                }
                members = {ext: data, "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()}
                if caption is not None:
                    members["txt"] = caption.encode()
                samples.append((row["key"], members))
            status.append(
                {
                    "key": row["key"],
                    "id": row["id"],
                    "url": row["url"],
                    "caption": caption,
                    "status": "success" if rej is None else "failed",
                    "stage": None if rej is None else rej["stage"],
                    "reason": None if rej is None else rej["reason"],
                    "detail": None if rej is None else rej["detail"],
                    "width": row["width"],
                    "height": row["height"],
                    "image_sha256": row["image_sha256"] if rej is None else None,
                    "source": row["lineage"]["source"],
                    "offset": row["lineage"]["offset"],
                }
            )
        tar = tar_bytes(samples)
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(status, schema=ROW_STATUS), buf, compression="zstd")
        fs.pipe_file(f"{root}/{shard:05d}.parquet", buf.getvalue())
        fs.pipe_file(f"{root}/{shard:05d}.tar", tar)
        reasons = Counter(f"{s['stage']}/{s['reason']}" for s in status if s["reason"])
        out.append(
            {
                "shard": shard,
                "rows": len(status),
                "kept": len(samples),
                "tar_sha256": hashlib.sha256(tar).hexdigest(),
                "reasons": json.dumps(dict(sorted(reasons.items()))),
            }
        )
        start = end
    return pa.Table.from_pylist(out, schema=SHARD_OUT)


def run_download(
    inputs: list[str],
    output: str,
    cfg: DownloadConfig,
    ingest: IngestConfig | None = None,
    shard_size: int = 10_000,
    image_size: int | None = None,
    jpeg_quality: int = 95,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    quiet: bool = True,
) -> dict:
    """Download the images of the URL tables ``inputs`` into ``output`` (see the module doc)."""

    from mm1data.download.phase import download_phase
    from mm1data.ingest import plan
    from mm1data.ingest.job import read_streams
    from mm1data.runners.pipeline import with_schema
    from mm1data.runners.ray_session import ray_session

    if shard_size < 1 or (image_size is not None and image_size < 8):
        raise UsageError("--shard-size must be >= 1 and --image-size >= 8")
    start = time.perf_counter()
    cfg = dataclasses.replace(cfg, enabled=True)
    recipe = Recipe(
        sources=Sources(captions=tuple(SourceSpec(path=p) for p in inputs)),
        ingest=ingest or IngestConfig(),
        download=cfg,
    )
    units = [u for spec in recipe.sources.captions for u in plan("caption", spec)]
    bad = [u.path for u in units if u.format not in ("parquet", "csv", "tsv", "jsonl")]
    if bad:
        raise UsageError(f"not a URL table (Parquet, CSV, TSV or JSON lines): {bad[0]}")
    for u in units:
        check_columns(u.path, u.format, cfg)
    root = output.rstrip("/")
    fs, path = fsspec_fs(root)
    for old in fs.glob(f"{path}/[0-9]*.tar") + fs.glob(f"{path}/[0-9]*.parquet"):
        fs.rm(old)
    fs.makedirs(path, exist_ok=True)
    with ray_session(ray_address, num_cpus, quiet=quiet):
        import ray.data

        # the shuffles here carry encoded images, which zstd cannot shrink: spare the CPU
        ray.data.DataContext.get_current().shuffle_compression = "none"
        ray_start = time.perf_counter() - start
        streams = read_streams(recipe, {"caption": units}, synthetic={})
        out, urls, dl_stats = download_phase(streams, cfg, recipe.ingest, f"{root}/{WORK}")
        ds = out["caption"]
        counts: Counter = Counter()
        for r in ds.map_batches(row_counts, batch_format="pyarrow").take_all():
            counts[r["source"]] += r["rows"]
        if image_size:  # in parallel over blocks, before rows gather per shard
            ds = ds.map_batches(
                resize_batch, fn_args=(image_size, jpeg_quality), batch_format="pyarrow", batch_size=64
            )
        starts, total = {}, 0
        for u in units:
            starts[u.path], total = total, total + counts[u.path]
        n_shards = max(1, -(-total // shard_size))
        keyed = with_schema(
            ds.map_batches(assign_shards, fn_args=(starts, shard_size), batch_format="pyarrow"),
            CAPTION_PAIR.append(pa.field("shard", pa.int64())).append(pa.field("key", pa.string())),
        )
        written = keyed.repartition(n_shards, keys=["shard"], sort=True).map_batches(
            write_shards, fn_args=(root,), batch_size=None, batch_format="pyarrow"
        )
        shards = sorted(written.take_all(), key=lambda r: r["shard"])
        _write_url_table(urls, f"{root}/urls")
    reasons: Counter = Counter()
    for s in shards:
        reasons.update(json.loads(s["reasons"]))
    kept = sum(s["kept"] for s in shards)
    stats = {
        "output": output,
        "read": total,
        "kept": kept,
        "rejected": total - kept,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "shards": [
            {"shard": s["shard"], "rows": s["rows"], "kept": s["kept"], "sha256": s["tar_sha256"]}
            for s in shards
        ],
        "download": dl_stats,
        "config": to_dict(cfg),
        "image_size": image_size,
        "wall_s": round(time.perf_counter() - start, 3),
        "ray_start_s": round(ray_start, 3),
    }
    fs.pipe_file(f"{path}/stats.json", (json.dumps(stats, indent=2) + "\n").encode())
    return stats
