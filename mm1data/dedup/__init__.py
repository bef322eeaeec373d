"""Deduplication across all streams: exact and near-duplicate texts and images, and optional
decontamination, as named phases on Ray Data (see :mod:`mm1data.dedup.phases`).

:func:`dedup_streams` takes and returns ``{stream: ray.data.Dataset}`` in the stream schemas of
:mod:`mm1data.schemas`; rows already rejected pass through, removed records get a ``reject``
(stage ``dedup``, reason ``exact_duplicate``, ``near_duplicate`` or ``decontaminated``,
``duplicate_of`` the survivor, score the similarity), removed images inside interleaved docs go
to ``item_rejects``. The survivors do not depend on the number of blocks or workers.
"""

from __future__ import annotations

from mm1data.config import DedupConfig
from mm1data.dedup.phases import KINDS, DedupRun, apply_all, find_duplicates, phase_stats

__all__ = ["KINDS", "DedupRun", "dedup_streams", "find_duplicates"]


def dedup_streams(streams: dict, cfg: DedupConfig | None = None, stats: dict | None = None) -> dict:
    """Deduplicate ``{stream: ray.data.Dataset}`` with every enabled kind; returns lazy datasets
    of the same schemas. ``stats``, if given, receives ``phases`` (per kind: in, kept, dropped per
    reason) and ``steps`` (seconds of the index, group and components steps)."""
    cfg = cfg or DedupConfig()
    streams = {s: ds.materialize() for s, ds in streams.items()}
    run = find_duplicates(streams, cfg)
    if stats is not None:
        stats["phases"] = phase_stats(run)
        stats["steps"] = {k: round(v, 3) for k, v in run.seconds.items()}
    return apply_all(streams, run.removals)
