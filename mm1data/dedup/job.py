"""The ``mm1data dedup`` job: ``mm1data ingest``/``filter`` output in, deduplicated Parquet,
rejects and stats.json out (the same dedup phase ``mm1data build`` runs)."""

from __future__ import annotations

from mm1data.config import Recipe


def run_dedup(recipe: Recipe, input_dir: str, output: str) -> dict:
    """Deduplicate every stream of ``input_dir`` into ``output``; returns (and writes) the stats."""
    from mm1data.dedup.phases import DedupPhase
    from mm1data.ingest.job import ReadRecordsPhase, export_streams
    from mm1data.runners.executor import Data, Executor

    def amend(stats: dict, data: Data) -> dict:
        export_streams(data, output)
        stats.update(stats.pop("dedup", {}))
        stats["seconds"] = stats["timings_s"].get("dedup", 0.0)
        for phase in stats.get("phases", []):
            phase["records_per_s"] = round(phase["in"] / stats["seconds"], 1) if stats["seconds"] else None
        return stats

    phases = [ReadRecordsPhase(input_dir), DedupPhase(recipe.dedup)]
    return Executor(output, recipe.ray.address, recipe.ray.num_cpus).run(phases, amend=amend).stats
