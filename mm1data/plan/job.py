"""``mm1data plan``: the build's phases on a seeded record sample, then the projection.

The phases are the build's own (:func:`mm1data.build.build_phases`) less the write phase: ingest
reads every record and keeps a seeded sample of the live ones (:mod:`mm1data.ingest.sample`),
filter, dedup, tokenize and plan run on the sample, and :class:`~mm1data.plan.measure.MeasurePhase`
reduces the checkpoints to counts. :func:`~mm1data.plan.project.project` turns them into the full
build's numbers; ``plan.json`` (and ``stats.json`` of the sample run) go to ``output``. A plan
always starts afresh (its CPU times are measurements).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from mm1data import __version__
from mm1data.build import RUN_ONLY, build_phases
from mm1data.config import Recipe, SampleConfig, to_dict
from mm1data.errors import UsageError
from mm1data.ingest import plan as plan_units
from mm1data.ingest.job import SOURCE_FIELDS, IngestPhase
from mm1data.ingest.sample import NOT_SAMPLED
from mm1data.io.fs import fsspec_fs
from mm1data.pack.phase import PLACEMENT, PlanPhase
from mm1data.plan.measure import (
    DUPLICATE_REASONS,
    CpuMeter,
    MeasurePhase,
    MeteredLog,
    record_stream,
    warm_up_workers,
)
from mm1data.plan.project import project, wilson, z_of
from mm1data.runners.executor import Context, Data, Executor, Phase
from mm1data.shards.phase import WritePhase


class SamplePlanPhase(PlanPhase):
    """The build's plan phase, on a sample that may lack a stream of the mix (a small sample of
    a scarce stream): then it places nothing and says why, and the projection goes on."""

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        try:
            return super().run(data, ctx)
        except UsageError as e:
            import ray.data

            ctx.info[self.name] = {"partitions": 0, "sums": {}, "unplanned": str(e)}
            return {"placements": ray.data.from_arrow(PLACEMENT.empty_table())}


def plan_phases(recipe: Recipe) -> list[Phase]:
    """The build's phases without the write phase, ingest sampling, then the measure phase."""
    sample = SampleConfig(recipe.plan.sample, recipe.plan.sample_seed)
    phases: list[Phase] = []
    for phase in build_phases(recipe):
        if isinstance(phase, IngestPhase):
            phase = IngestPhase(phase.sources, phase.cfg, phase.units, sample, phase.synthetic)
        elif isinstance(phase, PlanPhase):
            phase = SamplePlanPhase(phase.cfg)
        elif isinstance(phase, WritePhase):
            continue
        phases.append(phase)
    return [*phases, MeasurePhase()]


def run_plan(recipe: Recipe, output: str, quiet: bool = True, json_lines: bool = False) -> dict:
    """Run the sample through the phases into ``output`` and return (and write) ``plan.json``."""
    from mm1data.runners.ray_session import ray_session

    cfg = recipe.plan
    phases = plan_phases(recipe)
    with ray_session(recipe.ray.address, recipe.ray.num_cpus, quiet=quiet or json_lines):
        import ray

        warm_up_workers(int(ray.cluster_resources().get("CPU", 1)))
        meter = CpuMeter().start()
        log = MeteredLog(meter, quiet=quiet, json_lines=json_lines)
        try:
            executor = Executor(output, recipe.ray.address, recipe.ray.num_cpus, log, restart=True)
            stats = executor.run(phases, base=to_dict(recipe.sources)).stats
        finally:
            meter.stop()
    cores = cfg.cores_per_node or os.cpu_count() or 1
    if recipe.ray.address:
        cpus = stats["measure"]["cluster_cpus"]
        cpu_s = {k: v * cpus for k, v in stats["timings_s"].items()}
        driver_s = dict.fromkeys(cpu_s, 0.0)
        method = (
            f"wall seconds × the {cpus} CPUs of the joined cluster, all scaled with the records "
            "(an upper bound: the CPU time of remote workers is not read)"
        )
    else:
        cpu_s = log.worker_cpu_s
        driver_s = {k: round(v - log.worker_cpu_s.get(k, 0.0), 3) for k, v in log.cpu_s.items()}
        method = (
            "CPU seconds (user + system) of the Ray worker processes, sampled every 0.2 s, scaled with "
            "the records; the driver's (Ray Data scheduling, counts) added unscaled"
        )
    build = dataclasses.replace(recipe.build, **{k: None for k in RUN_ONLY})
    projection = project(stats, cpu_s, build, cfg, cores, method, driver_s)
    result = {
        "mm1data": __version__,
        "output": executor.output,
        "plan": to_dict(cfg),
        "build": {k: v for k, v in to_dict(build).items() if k not in RUN_ONLY},
        "sample": {
            "fraction": cfg.sample,
            "seed": cfg.sample_seed,
            "records_read": sum(s["read"] for s in projection["streams"].values()),
            "records_sampled": sum(s["sampled"] for s in projection["streams"].values()),
            "wall_s": stats["wall_s"],
            "packed": _sample_packing(stats),
        },
        "sources": per_source(recipe, stats, projection, z_of(cfg.confidence)),
        **projection,
    }
    fs, root = fsspec_fs(executor.output)
    fs.pipe_file(f"{root}/plan.json", (json.dumps(result, indent=2) + "\n").encode())
    return result


def _sample_packing(stats: dict) -> dict:
    """What the plan phase made of the sample itself (sequences, shards, examples)."""
    sums = stats.get("plan", {}).get("sums", {})
    return {
        "sequences": sum(v for k, v in sums.items() if k.startswith("gsequences/")),
        "shards": sums.get("shards/all", 0),
        "tokens": sum(v for k, v in sums.items() if k.startswith("tokens/")),
        "tokens_by_stream": {k.split("/", 1)[1]: v for k, v in sums.items() if k.startswith("tokens/")},
        **({"unplanned": stats["plan"]["unplanned"]} if "unplanned" in stats.get("plan", {}) else {}),
    }


def source_labels(recipe: Recipe) -> dict[str, str]:
    """Each input file → the source it was given as (its ``name``, else its path)."""
    labels = {}
    for stream, field in SOURCE_FIELDS.items():
        for spec in getattr(recipe.sources, field):
            for unit in plan_units(stream, spec):
                labels[unit.path] = spec.name or spec.path
    return labels


def per_source(recipe: Recipe, stats: dict, projection: dict, z: float) -> dict[str, dict[str, Any]]:
    """Per stream and source: records read, sampled, kept fraction (Wilson), rejects by reason
    (in the sample), mean text tokens and images per kept record, and the projected kept records
    (the stream's dedup correction applied in proportion)."""
    labels = source_labels(recipe)
    slot = recipe.build.image_tokens + (2 if recipe.build.image_markers else 0)
    facts = stats["measure"]
    rows: dict[str, dict[str, dict]] = {}
    for stream, files in facts["funnel"].items():
        for path, phases in files.items():
            row = rows.setdefault(stream, {}).setdefault(labels.get(path, path), _empty_row())
            for phase, outcomes in phases.items():
                for outcome, n in outcomes.items():
                    if phase == "ingest":
                        row["read"] += n
                    if outcome == "live":
                        row[{"ingest": "sampled", "dedup": "kept"}.get(phase, "_")] += n
                    elif outcome == f"ingest/{NOT_SAMPLED}":
                        row["not_sampled"] += n
                    else:
                        row["rejects"][outcome] = row["rejects"].get(outcome, 0) + n
                        row["duplicates"] += outcome in (f"dedup/{r}" for r in DUPLICATE_REASONS)
    for ex_stream, files in facts["examples"].items():
        for path, sums in files.items():
            row = rows.setdefault(record_stream(ex_stream), {}).setdefault(
                labels.get(path, path), _empty_row()
            )
            for k in ("tokens", "images"):
                row[k] += sums.get(k, 0)
    out: dict[str, dict[str, Any]] = {}
    for stream, by_source in rows.items():
        st = projection["streams"].get(stream, {})
        f = st.get("fraction", 1.0)
        d = projection["dedup"]["removals_by_kind"].get(stream, {})
        g = (d.get("point") or 0) / d["low"] if d.get("low") else 1.0
        for label, r in sorted(by_source.items()):
            live = r["read"] - sum(v for k, v in r["rejects"].items() if k.startswith("ingest/"))
            n, kept = r["sampled"], r["kept"]
            lo, hi = wilson(kept, n, z, 1 - f)
            download = sum(v for k, v in r["rejects"].items() if k.startswith("download/"))
            out.setdefault(stream, {})[label] = {
                "read": r["read"],
                "sampled": n,
                "kept_sample": kept,
                "kept_fraction": round(kept / n, 6) if n else None,
                "kept_fraction_low": round(lo, 6),
                "kept_fraction_high": round(hi, 6),
                "rejected_by_reason": dict(sorted(r["rejects"].items())),
                "mean_text_tokens_per_kept": round((r["tokens"] - slot * r["images"]) / kept, 2)
                if kept
                else None,
                "mean_images_per_kept": round(r["images"] / kept, 3) if kept else None,
                "download_success_rate": round(1 - download / (n + download), 6) if download else None,
                "projected_kept": round(live * (kept + r["duplicates"]) / n - r["duplicates"] / f * g)
                if n
                else 0,
            }
    return out


def _empty_row() -> dict:
    return {
        "read": 0,
        "sampled": 0,
        "not_sampled": 0,
        "kept": 0,
        "duplicates": 0,
        "tokens": 0,
        "images": 0,
        "rejects": {},
        "_": 0,
    }
