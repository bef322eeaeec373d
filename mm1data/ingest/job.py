"""The ingest job: plan sources on the driver, read them on Ray Data, write Parquet + stats.json.

Output layout under ``--output``: ``<stream>/*.parquet`` (kept rows, stream schema without the
``reject`` column), ``rejects/<stream>/*.parquet`` (:data:`~mm1data.schemas.REJECT` rows) and
``stats.json`` (counts per stream and per reject reason, wall time, Ray start-up time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import fsspec
import pyarrow as pa

from mm1data.config import IngestConfig, Recipe, reader_config
from mm1data.download.job import run_download_phase
from mm1data.ingest import plan, read_unit
from mm1data.ingest.base import Unit
from mm1data.ingest.synthetic import AttachSynthetic, read_synthetic, require_specs, synthetic_index
from mm1data.runners.pipeline import StreamStats, stats_json, write_stream
from mm1data.runners.ray_session import ray_session
from mm1data.schemas import REJECT

SOURCE_FIELDS = {"caption": "captions", "interleaved": "interleaved", "text": "text"}


def plan_streams(recipe: Recipe) -> dict[str, list[Unit]]:
    """Work units per stream; fails fast (``UsageError``) on any bad source before Ray starts."""
    require_specs(recipe.sources.synthetic_captions)
    units = {}
    for stream, field in SOURCE_FIELDS.items():
        specs = getattr(recipe.sources, field)
        if specs:
            units[stream] = [u for spec in specs for u in plan(stream, spec)]
    if not units:
        from mm1data.errors import UsageError

        raise UsageError("no caption, interleaved or text sources given")
    return units


def _read_units(batch: pa.Table, cfg: IngestConfig, synthetic: dict) -> Iterator[pa.Table]:
    """Ray Data UDF: read every unit named in ``batch`` (one per row), yielding record batches."""
    attach = AttachSynthetic(synthetic)
    for text in batch.column("unit").to_pylist():
        unit = Unit.from_json(text)
        for table in read_unit(unit, cfg):
            yield attach(table) if unit.stream == "caption" else table


def read_streams(
    recipe: Recipe, units: dict[str, list[Unit]] | None = None, synthetic: dict | None = None
) -> dict:
    """One Ray dataset per stream present, in the stream schema with the ``reject`` column.

    Synthetic captions are joined onto caption pairs while reading. Requires Ray to be running.
    """
    import ray.data

    units = units if units is not None else plan_streams(recipe)
    if synthetic is None:
        synthetic = synthetic_index(read_synthetic(recipe.sources.synthetic_captions)[0])
    out = {}
    for stream, stream_units in units.items():
        ds = ray.data.from_items(
            [{"unit": u.to_json()} for u in stream_units], override_num_blocks=len(stream_units)
        )
        out[stream] = ds.map_batches(
            _read_units, fn_args=(reader_config(recipe), synthetic), batch_size=1, batch_format="pyarrow"
        )
    return out


def synthetic_rejects(bad: list[dict], unmatched: list[dict]) -> pa.Table:
    """REJECT rows for synthetic captions: unreadable lines and captions whose image is absent."""
    rows = [
        {
            "id": b["id"],
            "stream": "synthetic_caption",
            "stage": "ingest",
            "reason": b["reason"],
            "lineage": {"source": b["source"], "offset": b["offset"]},
        }
        for b in bad
    ] + [
        {
            "id": f"synthetic:{u['image_key']}",
            "stream": "synthetic_caption",
            "stage": "ingest",
            "reason": "no_matching_image",
            "detail": u["image_key"],
        }
        for u in unmatched
    ]
    return pa.Table.from_pylist(rows, schema=REJECT)


def clear_output(output: str, names: list[str]) -> None:
    """Remove earlier results under ``output`` so a rerun never mixes old and new files."""
    fs, root = fsspec.core.url_to_fs(output)
    for name in names:
        path = f"{root.rstrip('/')}/{name}"
        if fs.exists(path):
            fs.rm(path, recursive=True)
    fs.makedirs(root, exist_ok=True)


def run_ingest(recipe: Recipe, output: str, quiet: bool = False) -> dict:
    """Ingest every source of ``recipe`` into ``output``; returns (and writes) the stats."""
    start = time.perf_counter()
    units = plan_streams(recipe)
    synth_table, synth_bad = read_synthetic(recipe.sources.synthetic_captions)
    synthetic = synthetic_index(synth_table)
    clear_output(output, [*units, "rejects", "stats.json"])
    with ray_session(recipe.ray.address, recipe.ray.num_cpus, quiet=quiet):
        ray_start_s = time.perf_counter() - start
        datasets = run_download_phase(read_streams(recipe, units, synthetic), recipe, output)
        per_stream: dict[str, StreamStats] = {}
        for stream, ds in datasets.items():
            per_stream[stream] = write_stream(ds, stream, output)
        if synth_table.num_rows or synth_bad:
            per_stream["synthetic_caption"] = _synthetic_stats(
                output, synth_table, synth_bad, datasets.get("caption")
            )
    stats = json.loads(
        stats_json(
            per_stream,
            {
                "output": output,
                "wall_s": round(time.perf_counter() - start, 3),
                "ray_start_s": round(ray_start_s, 3),
                "units": {s: len(u) for s, u in units.items()},
            },
        )
    )
    with fsspec.open(f"{output.rstrip('/')}/stats.json", "w") as f:
        json.dump(stats, f, indent=2)
    return stats


def _synthetic_stats(output: str, table: pa.Table, bad: list[dict], captions) -> StreamStats:
    """Count synthetic captions: attached to a kept pair, or rejected (bad line, no image)."""
    import pyarrow.parquet as pq

    keys: set[str] = set()
    if captions is not None:
        cols = captions.select_columns(["id", "image_sha256", "reject"]).take_all()
        keys = {k for r in cols if r["reject"] is None for k in (r["id"], r["image_sha256"]) if k}
    unmatched = [r for r in table.to_pylist() if r["image_key"] not in keys]
    rejects = synthetic_rejects(bad, unmatched)
    fs, root = fsspec.core.url_to_fs(output)
    fs.makedirs(f"{root}/rejects/synthetic_caption", exist_ok=True)
    with fs.open(f"{root}/rejects/synthetic_caption/part-0.parquet", "wb") as f:
        pq.write_table(rejects, f)
    stats = StreamStats(read=table.num_rows + len(bad), kept=table.num_rows - len(unmatched))
    stats.rejected = rejects.num_rows
    for reason in rejects.column("reason").to_pylist():
        key = f"ingest/{reason}"
        stats.rejected_by_reason[key] = stats.rejected_by_reason.get(key, 0) + 1
    return stats
