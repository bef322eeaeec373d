"""``mm1data build``: the whole pipeline as one list of phases run by the executor.

ingest → (download) → filter → dedup → tokenize → plan → write (see each phase's module, and
:mod:`mm1data.runners.executor` for checkpoints, resume, rejects, stats and progress). ``mm1data
ingest``, ``filter`` and ``dedup`` run prefixes of the same phases.
"""

from __future__ import annotations

import dataclasses

from mm1data.config import BuildConfig, Recipe, to_dict
from mm1data.dedup.phases import DedupPhase
from mm1data.filters.job import FilterPhase
from mm1data.ingest.job import ingest_phases, plan_streams
from mm1data.pack.mix import parse_mix
from mm1data.pack.phase import PlanPhase
from mm1data.report import StageLog
from mm1data.runners.executor import Data, Executor, Phase
from mm1data.shards.phase import WritePhase
from mm1data.tokens.phase import TokenizePhase, synthetic_share
from mm1data.tokens.tokenizer import TextTokenizer

RUN_ONLY = ("workers",)
"""Build settings that change how a build runs, never what it writes (left out of fingerprints)."""


def build_phases(recipe: Recipe) -> list[Phase]:
    """The phases of a build of ``recipe``; fails fast on a bad tokenizer, mix or source."""
    cfg = recipe.build
    tok = TextTokenizer(cfg.tokenizer)
    target = parse_mix(cfg.mix)
    units = plan_streams(recipe)
    return [
        *ingest_phases(recipe, units),  # ingest, then download when recipe.download is enabled
        FilterPhase(recipe.filters),
        DedupPhase(recipe.dedup),
        TokenizePhase(cfg, tok, synthetic_share(cfg, target)),
        PlanPhase(_what(cfg)),
        WritePhase(_what(cfg), tok),
    ]


def _what(cfg: BuildConfig) -> BuildConfig:
    """``cfg`` without the settings of :data:`RUN_ONLY` (so they never invalidate a checkpoint)."""
    return dataclasses.replace(cfg, **{k: None for k in RUN_ONLY})


def run_build(recipe: Recipe, output: str, restart: bool = False, log: StageLog | None = None) -> dict:
    """Build ``recipe`` into ``output`` (local folder or ``s3://``); returns (and writes) the stats.

    Resumable: each phase leaves a marker under ``output/_work``, so a rerun with the same
    arguments redoes only unfinished or invalidated work; ``restart`` starts from scratch."""
    phases = build_phases(recipe)
    log = log or StageLog(quiet=True)

    def amend(stats: dict, data: Data) -> dict:
        write = stats.pop("write", {})
        plan = stats.pop("plan", {})
        stats["examples"] = {
            **write.get("examples", {}),
            "rejected_by_reason": {
                **{
                    f"{k.split('/', 1)[0]}/tokenize/{k.rsplit('/', 1)[1]}": v
                    for k, v in stats["rejects"].get("tokenize", {}).items()
                },
                **{
                    f"{k.split('/', 1)[0]}/mix/{k.rsplit('/', 1)[1]}": v
                    for k, v in stats["rejects"].get("mix", {}).items()
                },
            },
        }
        header = write.get("header", {})
        stats["mix"] = header.get("mix", {})
        stats["epochs"] = header.get("epochs", {})
        stats["totals"] = write.get("totals", {})
        stats["shards"] = stats["totals"].get("shards", 0)
        stats["plan_partitions"] = plan.get("partitions")
        stats["resumed"] = log.resumed_stages + (
            ["write (partly)"] if write.get("kept_from_earlier_run") else []
        )
        return stats

    executor = Executor(output, recipe.ray.address, recipe.ray.num_cpus, log, restart)
    stats = executor.run(phases, base=to_dict(recipe.sources), amend=amend).stats
    log.stage("build", stats["wall_s"], shards=stats["shards"], sequences=stats["totals"].get("sequences", 0))
    return stats
