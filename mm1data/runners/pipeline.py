"""Ray Data wiring shared by every job: run stages over a stream, split kept from rejects, count.

Stages are plain callables over ``pyarrow.Table`` batches (see :mod:`mm1data.stages`); this
module is the only place that turns them into Ray Data operators.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.schemas import REJECT, STREAM_SCHEMAS
from mm1data.stages import Stage, live_mask

_CHAINS: dict[str, list[Stage]] = {}
_TIMERS: dict[str, object] = {}


def chain_token(stages: Sequence[Stage]) -> str:
    """A name for a chain's configuration: workers set a chain up once per process and token."""
    from mm1data.runners.workdir import fingerprint

    return fingerprint([(type(s).__name__, repr(sorted(vars(s).items()))) for s in stages])


def run_stage_chain(table: pa.Table, stages: Sequence[Stage], token: str, timer: str | None) -> pa.Table:
    """Ray Data UDF: apply ``stages`` in order; ``setup()`` runs once per worker process (models load
    once), and with ``timer`` each stage's seconds and rows go to that named actor."""
    chain = _CHAINS.get(token)
    if chain is None:
        chain = list(stages)
        for stage in chain:
            stage.setup()
        _CHAINS[token] = chain
    seconds = []
    for stage in chain:
        t0 = time.perf_counter()
        rows = table.num_rows
        table = stage(table)
        seconds.append((stage.name, time.perf_counter() - t0, rows))
    if timer:
        import ray

        if timer not in _TIMERS:
            _TIMERS[timer] = ray.get_actor(timer)
        _TIMERS[timer].add.remote(seconds)
    return table


def apply_stages(ds, stages: Sequence[Stage], timer: str | None = None, batch_size: int = 256):
    """Apply ``stages`` to ``ds`` batch by batch in Ray tasks (set up once per worker process)."""
    if not stages:
        return ds
    return ds.map_batches(
        run_stage_chain,
        fn_args=(list(stages), chain_token(stages), timer),
        batch_size=batch_size,
        batch_format="pyarrow",
    )


class StageTimer:
    """Ray actor that sums each stage's seconds and rows across workers (``mm1data filter``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, entries: list[tuple[str, float, int]]) -> None:
        """Add one batch's (stage, seconds, rows) entries."""
        for name, secs, _ in entries:
            self.seconds[name] = self.seconds.get(name, 0.0) + secs

    def totals(self) -> dict[str, float]:
        """Seconds per stage so far."""
        return dict(self.seconds)


def to_rejects(table: pa.Table, stream: str) -> pa.Table:
    """The :data:`~mm1data.schemas.REJECT` rows of a stream batch: rejected records, plus the
    item-level rejects (``item_rejects``) of interleaved docs, whose ids are ``<doc id>#<n>``."""
    rows = []
    ids = table.column("id").to_pylist()
    lineages = table.column("lineage").to_pylist()
    for i, rej in enumerate(table.column("reject").to_pylist()):
        if rej is not None:
            rows.append({"id": ids[i], "stream": stream, "lineage": lineages[i], **rej})
    if "item_rejects" in table.column_names:
        for i, items in enumerate(table.column("item_rejects").to_pylist()):
            for n, rej in enumerate(items or []):
                rows.append(
                    {"id": f"{ids[i]}#{n}", "stream": f"{stream}_item", "lineage": lineages[i], **rej}
                )
    return pa.Table.from_pylist(rows, schema=REJECT)


def kept_rows(table: pa.Table) -> pa.Table:
    """Live rows of a stream batch, with the ``reject`` column dropped."""
    return table.filter(pa.array(live_mask(table))).drop_columns(["reject"])


def batch_counts(table: pa.Table, stream: str) -> pa.Table:
    """One-row-per-outcome counts of a batch: (stream, stage, reason, n). Kept rows have stage ''."""
    counts: Counter = Counter()
    for rej in table.column("reject").to_pylist():
        counts[("", "") if rej is None else (rej["stage"], rej["reason"])] += 1
    if "item_rejects" in table.column_names:
        for items in table.column("item_rejects").to_pylist():
            for rej in items or []:
                counts[("item:" + rej["stage"], rej["reason"])] += 1
    keys = list(counts)
    return pa.table(
        {
            "stream": [stream] * len(keys),
            "stage": [k[0] for k in keys],
            "reason": [k[1] for k in keys],
            "n": np.array([counts[k] for k in keys], dtype=np.int64),
        }
    )


@dataclass
class StreamStats:
    """Counts for one stream: read = kept + rejected, and rejects per ``stage/reason``."""

    read: int = 0
    kept: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    item_rejects_by_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-able form (as written in stats.json)."""
        return {
            "read": self.read,
            "kept": self.kept,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "item_rejects_by_reason": dict(sorted(self.item_rejects_by_reason.items())),
        }


def count_stream(ds, stream: str) -> StreamStats:
    """Count outcomes of a (materialized) stream dataset."""
    parts = ds.map_batches(batch_counts, fn_args=(stream,), batch_format="pyarrow").take_all()
    stats = StreamStats()
    for row in parts:
        n = int(row["n"])
        if row["stage"] == "":
            stats.kept += n
            stats.read += n
        elif row["stage"].startswith("item:"):
            key = f"{row['stage'][5:]}/{row['reason']}"
            stats.item_rejects_by_reason[key] = stats.item_rejects_by_reason.get(key, 0) + n
        else:
            key = f"{row['stage']}/{row['reason']}"
            stats.rejected += n
            stats.read += n
            stats.rejected_by_reason[key] = stats.rejected_by_reason.get(key, 0) + n
    return stats


def write_stream(ds, stream: str, output: str, filesystem=None) -> StreamStats:
    """Materialize ``ds``, write kept rows to ``output/<stream>`` and rejects to
    ``output/rejects/<stream>`` as Parquet, and return the counts."""
    ds = ds.materialize()
    stats = count_stream(ds, stream)
    kept = ds.map_batches(kept_rows, batch_format="pyarrow")
    rejects = ds.map_batches(to_rejects, fn_args=(stream,), batch_format="pyarrow")
    kept.write_parquet(f"{output}/{stream}", filesystem=filesystem, min_rows_per_file=10_000)
    rejects.write_parquet(f"{output}/rejects/{stream}", filesystem=filesystem, min_rows_per_file=10_000)
    return stats


def empty_stream_table(stream: str) -> pa.Table:
    """An empty batch of ``stream``'s schema."""
    return STREAM_SCHEMAS[stream].empty_table()


def stats_json(per_stream: dict[str, StreamStats], extra: dict | None = None) -> str:
    """The ``stats.json`` text for a job."""
    body = {"streams": {k: v.as_dict() for k, v in per_stream.items()}, **(extra or {})}
    return json.dumps(body, indent=2, sort_keys=False) + "\n"


def is_null(col: pa.ChunkedArray) -> np.ndarray:
    """Numpy bool mask of nulls in ``col``."""
    return pc.is_null(col).to_numpy(zero_copy_only=False)


def with_schema(ds, schema: pa.Schema):
    """``ds`` materialized with every block cast to ``schema``, empty ones included.

    A Ray Data map task whose input block has no rows never calls its UDF and emits an empty
    block with *no* columns; a later hash shuffle then fails to concatenate it ("Schema at index
    1 was different"). Hostile input (a batch whose records were all rejected) makes such blocks.
    """
    import ray
    import ray.data

    @ray.remote
    def cast(block: pa.Table) -> pa.Table:
        return block.cast(schema) if block.num_columns else schema.empty_table()

    refs = ds.materialize().to_arrow_refs()
    return (
        ray.data.from_arrow_refs([cast.remote(r) for r in refs])
        if refs
        else ray.data.from_arrow(schema.empty_table())
    )
