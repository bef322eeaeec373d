"""The stage contract: small callables over a ``pyarrow.Table`` batch of one stream.

A :class:`Stage` maps a table to a table of the same schema. Rows already rejected (``reject``
not null) pass through untouched; a stage only ever looks at live rows. A :class:`Filter` is the
common case: it returns a :class:`Decision` (keep/drop, reason, score, detail) per live row and
the base class fills the ``reject`` column of dropped rows. Stages do no I/O; ``setup()`` loads
models once per worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.schemas import REJECT_INFO

HEAVY_COLUMNS = ("image", "items")
"""Payload columns emptied on rejected rows so rejects do not carry image bytes downstream."""


@dataclass
class Decision:
    """Per-row outcome of a filter over a batch of ``n`` live rows.

    ``keep[i]`` False means drop with ``reason[i]``; ``score`` and ``detail`` say why.
    """

    keep: np.ndarray  # bool[n]
    reason: list[str | None]
    score: list[float | None] | None = None
    detail: list[str | None] | None = None

    @classmethod
    def keep_all(cls, n: int) -> Decision:
        """A decision that keeps all ``n`` rows."""
        return cls(np.ones(n, dtype=bool), [None] * n)


def live_mask(table: pa.Table) -> np.ndarray:
    """Boolean mask of rows not yet rejected."""
    return pc.is_null(table.column("reject")).to_numpy(zero_copy_only=False)


def reject_rows(
    table: pa.Table,
    drop: np.ndarray,
    stage: str,
    reason: list[str | None] | str,
    score: list[float | None] | None = None,
    detail: list[str | None] | None = None,
    duplicate_of: list[str | None] | None = None,
) -> pa.Table:
    """Mark rows where ``drop`` is True as rejected by ``stage``; other rows keep their reject.

    Per-row lists are indexed like the table. Heavy payload columns of newly rejected rows are
    nulled so rejects stay small.
    """
    n = table.num_rows
    drop = np.asarray(drop, dtype=bool)
    if not drop.any():
        return table
    reasons = [reason] * n if isinstance(reason, str) else reason
    old = table.column("reject").to_pylist()
    new = []
    for i in range(n):
        if drop[i] and old[i] is None:
            new.append(
                {
                    "stage": stage,
                    "reason": reasons[i],
                    "detail": detail[i] if detail else None,
                    "score": None if score is None or score[i] is None else float(score[i]),
                    "duplicate_of": duplicate_of[i] if duplicate_of else None,
                }
            )
        else:
            new.append(old[i])
    idx = table.schema.get_field_index("reject")
    table = table.set_column(idx, table.schema.field(idx), pa.array(new, type=REJECT_INFO))
    newly = pa.array(drop & np.array([o is None for o in old]))
    for name in HEAVY_COLUMNS:
        if name in table.column_names:
            col = table.column(name)
            j = table.schema.get_field_index(name)
            nulls = pa.nulls(n, type=col.type)
            table = table.set_column(j, table.schema.field(j), pc.if_else(newly, nulls, col))
    return table


class Stage:
    """A pure step over a batch of one stream. Subclasses set ``name`` and ``streams``."""

    name: ClassVar[str] = "stage"
    streams: ClassVar[tuple[str, ...]] = ()

    def setup(self) -> None:
        """Load models or tables once per worker. Default: nothing."""

    def __call__(self, table: pa.Table) -> pa.Table:
        """Apply the stage to a batch; rejected rows pass through."""
        raise NotImplementedError


class Filter(Stage):
    """A stage that keeps or drops whole records. Subclasses implement :meth:`decide`."""

    def decide(self, live: pa.Table) -> Decision:
        """Decide keep/drop for every row of ``live`` (only live rows are passed)."""
        raise NotImplementedError

    def __call__(self, table: pa.Table) -> pa.Table:
        mask = live_mask(table)
        if not mask.any():
            return table
        idx = np.flatnonzero(mask)
        decision = self.decide(table.take(pa.array(idx)))
        n = table.num_rows
        drop = np.zeros(n, dtype=bool)
        reason: list[str | None] = [None] * n
        score: list[float | None] = [None] * n
        detail: list[str | None] = [None] * n
        for j, i in enumerate(idx):
            if not decision.keep[j]:
                drop[i] = True
                reason[i] = decision.reason[j]
                score[i] = decision.score[j] if decision.score else None
                detail[i] = decision.detail[j] if decision.detail else None
        return reject_rows(table, drop, self.name, reason, score, detail)


def set_item_columns(table: pa.Table, items: list, item_rejects: list) -> pa.Table:
    """``table`` (interleaved docs) with its ``items`` and ``item_rejects`` columns replaced."""
    for name, values, typ in (
        ("items", items, table.schema.field("items").type),
        ("item_rejects", item_rejects, pa.list_(REJECT_INFO)),
    ):
        j = table.schema.get_field_index(name)
        table = table.set_column(j, table.schema.field(j), pa.array(values, type=typ))
    return table


def rewrite_items(table: pa.Table, rewrite) -> pa.Table:
    """Interleaved docs with every item of their live rows passed through ``rewrite(item) ->
    (item or None, item rejects)``: None drops the item, the rejects are appended to
    ``item_rejects``. Rejected rows and unchanged batches pass through untouched."""
    live = live_mask(table)
    items_col = table.column("items").to_pylist()
    rejects_col = table.column("item_rejects").to_pylist()
    changed = False
    for i in np.flatnonzero(live):
        kept, rejects, touched = [], list(rejects_col[i] or []), False
        for item in items_col[i] or []:
            new, more = rewrite(item)
            touched = touched or new is not item or bool(more)
            rejects.extend(more)
            if new is not None:
                kept.append(new)
        if touched:
            items_col[i], rejects_col[i], changed = kept, rejects, True
    return set_item_columns(table, items_col, rejects_col) if changed else table
