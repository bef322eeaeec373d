"""The ``mm1data filter`` job: ingest output in, filtered Parquet, rejects and stats.json out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa

from mm1data.config import Recipe
from mm1data.errors import UsageError
from mm1data.filters import apply_filters, filter_stages
from mm1data.schemas import REJECT_INFO, STREAMS
from mm1data.stages import Stage


def with_reject_column(table: pa.Table) -> pa.Table:
    """Add back the null ``reject`` column that kept rows lose when written."""
    if "reject" in table.column_names:
        return table
    return table.append_column(pa.field("reject", REJECT_INFO), pa.nulls(table.num_rows, type=REJECT_INFO))


def read_ingest(input_dir: str) -> dict:
    """One Ray dataset per stream found under ``input_dir`` (``mm1data ingest`` output)."""
    import ray.data

    streams = {}
    for stream in STREAMS:
        path = Path(input_dir) / stream
        if path.is_dir() and any(path.rglob("*.parquet")):
            streams[stream] = ray.data.read_parquet(str(path)).map_batches(
                with_reject_column, batch_format="pyarrow"
            )
    if not streams:
        raise UsageError(f"no ingest output (caption/, interleaved/ or text/ Parquet) under {input_dir}")
    return streams


def stage_stats(stages: list[Stage], counts: dict, timings: dict[str, float]) -> list[dict]:
    """Per stage: in, kept, dropped per reason, seconds, records/s; in = kept + dropped."""
    rows, alive = [], counts["read"]
    for stage in stages:
        name = stage.name
        dropped = {
            k.split("/", 1)[1]: v
            for k, v in counts["rejected_by_reason"].items()
            if k.split("/", 1)[0] == name
        }
        items = {
            k.split("/", 1)[1]: v
            for k, v in counts["item_rejects_by_reason"].items()
            if k.split("/", 1)[0] == name
        }
        secs = timings.get(name, 0.0) + timings.get(name + ":count", 0.0)
        kept = alive - sum(dropped.values())
        row = {"stage": name, "in": alive, "kept": kept, "dropped": dropped, "seconds": round(secs, 3)}
        if items:
            row["items_dropped"] = items
        row["records_per_s"] = round(alive / secs, 1) if secs > 0 else None
        rows.append(row)
        alive = kept
    return rows


def run_filter(recipe: Recipe, input_dir: str, output: str) -> dict:
    """Filter every stream of ``input_dir`` into ``output``; returns (and writes) the stats."""
    from mm1data.runners.pipeline import write_stream
    from mm1data.runners.ray_session import ray_session

    with ray_session(recipe.ray.address, recipe.ray.num_cpus):
        streams = read_ingest(input_dir)
        timings: dict[str, dict[str, float]] = {}
        t0 = time.perf_counter()
        filtered = apply_filters(streams, recipe.filters, timings)
        stats: dict = {"streams": {}}
        for stream, ds in filtered.items():
            counts = write_stream(ds, stream, output).as_dict()
            counts["stages"] = stage_stats(filter_stages(recipe.filters, stream), counts, timings[stream])
            stats["streams"][stream] = counts
        stats["seconds"] = round(time.perf_counter() - t0, 3)
    Path(output).mkdir(parents=True, exist_ok=True)
    (Path(output) / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
