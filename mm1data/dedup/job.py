"""The ``mm1data dedup`` job: ``mm1data ingest``/``filter`` output in, deduplicated Parquet,
rejects and stats.json out."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mm1data.config import Recipe


def run_dedup(recipe: Recipe, input_dir: str, output: str) -> dict:
    """Deduplicate every stream of ``input_dir`` into ``output``; returns (and writes) the stats."""
    from mm1data.dedup import dedup_streams
    from mm1data.filters.job import read_ingest
    from mm1data.runners.pipeline import write_stream
    from mm1data.runners.ray_session import ray_session

    with ray_session(recipe.ray.address, recipe.ray.num_cpus):
        t0 = time.perf_counter()
        streams = read_ingest(input_dir)
        stats: dict = {}
        out = dedup_streams(streams, recipe.dedup, stats)
        t1 = time.perf_counter()
        stats["streams"] = {s: write_stream(ds, s, output).as_dict() for s, ds in out.items()}
        stats["steps"]["filter_and_write"] = round(time.perf_counter() - t1, 3)
        total = time.perf_counter() - t0
        stats["seconds"] = round(total, 3)
        for phase in stats["phases"]:
            phase["records_per_s"] = round(phase["in"] / total, 1) if total > 0 else None
    Path(output).mkdir(parents=True, exist_ok=True)
    (Path(output) / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
