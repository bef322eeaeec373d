"""The filter phase and the ``mm1data filter`` job (ingest output in, filtered Parquet, rejects
and stats.json out). ``mm1data build`` runs the same phase, so a chain runs the same way under
every command."""

from __future__ import annotations

from typing import Any

from mm1data.config import FilterConfig, Recipe, to_dict
from mm1data.filters import filter_stages, run_chain
from mm1data.runners.executor import Context, Data, Output, Phase, stream_output
from mm1data.schemas import STREAM_SCHEMAS, STREAMS
from mm1data.stages import Stage


class FilterPhase(Phase):
    """Every stream through its filter chain (:func:`mm1data.filters.filter_stages`).

    With ``timed`` the seconds each stage spent on workers are summed by a Ray actor and reported
    in ``stats.json`` under ``filter.seconds`` (``mm1data filter``); the build skips that actor."""

    name = "filter"

    def __init__(self, cfg: FilterConfig, timed: bool = False) -> None:
        self.cfg, self.timed = cfg, timed

    def fingerprint(self) -> Any:
        return to_dict(self.cfg)

    def declare(self, data: Data) -> tuple[Output, ...]:
        return tuple(stream_output(s) for s in STREAMS if s in data)

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        timer = None
        if self.timed:
            import ray

            from mm1data.runners.pipeline import StageTimer

            timer = f"mm1data-stage-timer-{id(self)}"
            actor = ray.remote(StageTimer).options(name=timer, num_cpus=0).remote()
        out = {}
        for stream in STREAMS:
            if stream in data:
                stages = filter_stages(self.cfg, stream)
                out[stream] = run_chain(
                    data.kept(stream), stages, data.rows(stream), STREAM_SCHEMAS[stream], timer
                )
        if timer:
            out = {s: ds.materialize() for s, ds in out.items()}
            ctx.info["filter"] = {"seconds": ray.get(actor.totals.remote())}
        return out


def stage_stats(stages: list[Stage], counts: dict, seconds: dict[str, float]) -> list[dict]:
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
        secs = seconds.get(name, 0.0)
        kept = alive - sum(dropped.values())
        row = {"stage": name, "in": alive, "kept": kept, "dropped": dropped, "seconds": round(secs, 3)}
        if items:
            row["items_dropped"] = items
        row["records_per_s"] = round(alive / secs, 1) if secs > 0 else None
        rows.append(row)
        alive = kept
    return rows


def run_filter(recipe: Recipe, input_dir: str, output: str) -> dict:
    """Filter every stream of ``input_dir`` into ``output``; returns (and writes) the stats, with
    per stage of each chain: in, kept, dropped per reason, seconds and records/s."""
    from mm1data.ingest.job import ReadRecordsPhase, export_streams
    from mm1data.runners.executor import Executor

    def amend(stats: dict, data: Data) -> dict:
        export_streams(data, output)
        seconds = stats.get("filter", {}).get("seconds", {})
        for stream, counts in stats["streams"].items():
            counts["stages"] = stage_stats(filter_stages(recipe.filters, stream), counts, seconds)
        stats["seconds"] = stats["timings_s"].get("filter", 0.0)
        return stats

    phases = [ReadRecordsPhase(input_dir), FilterPhase(recipe.filters, timed=True)]
    return Executor(output, recipe.ray.address, recipe.ray.num_cpus).run(phases, amend=amend).stats
