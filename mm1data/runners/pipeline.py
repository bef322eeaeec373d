"""Ray Data wiring of stage chains: stages are plain callables over ``pyarrow.Table`` batches (see
:mod:`mm1data.stages`); this module is the only place that turns them into Ray Data operators.
Kept/rejected splits, counts and rejects belong to :mod:`mm1data.runners.executor`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from mm1data.stages import Stage

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
    return map_in_slices(ds, run_stage_chain, (list(stages), chain_token(stages), timer), batch_size)


def map_in_slices(ds, fn: Callable[..., pa.Table], fn_args: tuple, rows: int, **kwargs: Any):
    """``ds.map_batches(fn, batch_size=rows)`` without Ray's gathering of input: ``fn`` sees at most
    ``rows`` rows per call, and a task maps the blocks it is given. Ray gathers ``batch_size`` input
    rows into each task of a fused map, and after a map over file paths or partition ids (one row
    each: :func:`~mm1data.runners.workdir.read_files`, a cogroup's reduce) that is ``rows`` files
    or partitions per task: tasks that grow with the data, and one task where there should be
    many. ``kwargs`` go to ``map_batches`` (``concurrency``, say)."""

    def sliced(table: pa.Table, *args: Any) -> Iterator[pa.Table]:
        for start in range(0, table.num_rows, rows):
            yield fn(table.slice(start, rows), *args)

    sliced.__name__ = sliced.__qualname__ = fn.__name__  # the operator's name in Ray's logs
    return ds.map_batches(sliced, fn_args=fn_args, batch_size=None, batch_format="pyarrow", **kwargs)


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
