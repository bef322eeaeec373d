"""Connected components over duplicate pairs, the survivor rule, and routing removals to rejects.

A *member* is what a phase deduplicates: a record (``"<stream>:<id>"``) or an image inside an
interleaved doc (``"interleaved:<doc id>#<position>"``). Pairs found by a phase are merged with
union-find; in every component one member survives, chosen by the **survivor rule**:

1. the higher ``quality_score`` (a missing score ranks below any score);
2. then the stream: caption before interleaved before text (a picture is kept with its caption
   pair, text is kept in the richer interleaved doc);
3. then the smallest id (string order).

The rule depends only on the members, never on the order pairs arrive in, so the survivors are
the same whatever the number of blocks or workers. Every other member is removed with the
survivor's id in ``duplicate_of`` and, as score, the highest similarity of its own pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from mm1data.stages import live_mask, reject_rows, set_item_columns

STREAM_ORDER = ("caption", "interleaved", "text")
STAGE = "dedup"


def record_member(stream: str, record_id: str) -> str:
    """The member name of a whole record."""
    return f"{stream}:{record_id}"


def item_member(doc_id: str, item: dict, index: int) -> str:
    """The member name of an image item of an interleaved doc (its source position, else index)."""
    pos = item.get("position")
    return f"interleaved:{doc_id}#{pos if pos is not None else f'i{index}'}"


def survivor_key(member: str, quality: float | None) -> tuple:
    """Sort key of the survivor rule: the smallest key survives."""
    stream, rid = member.split(":", 1)
    missing = quality is None or (isinstance(quality, float) and math.isnan(quality))
    return (1 if missing else 0, 0.0 if missing else -float(quality), STREAM_ORDER.index(stream), rid)


class UnionFind:
    """Disjoint sets over hashable members (path halving, union by size)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}

    def find(self, x: str) -> str:
        """The root of ``x``'s set (``x`` is added if new)."""
        parent = self.parent
        if x not in parent:
            parent[x], self.size[x] = x, 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        """Merge the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def resolve(
    pairs: Iterable[tuple[str, str, float]], quality: dict[str, float | None]
) -> dict[str, tuple[str, float]]:
    """``{removed member: (survivor member, score)}`` for the components of ``pairs``.

    ``quality`` gives each member's ``quality_score`` (absent = missing).
    """
    uf = UnionFind()
    best: dict[str, float] = {}
    for a, b, sim in pairs:
        uf.union(a, b)
        best[a] = max(best.get(a, -1.0), sim)
        best[b] = max(best.get(b, -1.0), sim)
    components: dict[str, list[str]] = {}
    for m in uf.parent:
        components.setdefault(uf.find(m), []).append(m)
    removed = {}
    for members in components.values():
        keep = min(members, key=lambda m: survivor_key(m, quality.get(m)))
        for m in members:
            if m != keep:
                removed[m] = (keep, best[m])
    return removed


def apply_removals(
    table: pa.Table, stream: str, removals: dict[str, tuple[str, str, float]], stage: str = STAGE
) -> pa.Table:
    """Reject the records of ``table`` named in ``removals`` (``{member: (reason, duplicate_of,
    score)}``); image items named there leave their interleaved doc for ``item_rejects``.

    A doc whose images were all removed keeps its text: that text is not a duplicate, or the text
    phases would have removed the doc.
    """
    if not removals or table.num_rows == 0:
        return table
    live = live_mask(table)
    ids = table.column("id").to_pylist()
    drop = np.zeros(table.num_rows, bool)
    reason: list[str | None] = [None] * table.num_rows
    score: list[float | None] = [None] * table.num_rows
    dup_of: list[str | None] = [None] * table.num_rows
    detail: list[str | None] = [None] * table.num_rows
    for i in np.flatnonzero(live):
        hit = removals.get(record_member(stream, ids[i]))
        if hit:
            drop[i], reason[i], score[i] = True, hit[0], hit[2]
            dup_of[i], detail[i] = _describe(hit[1])
    if stream == "interleaved":
        table = _remove_items(table, live & ~drop, ids, removals, stage)
    return reject_rows(table, drop, stage, reason, score, detail, dup_of)


def _describe(survivor: str) -> tuple[str, str]:
    """(duplicate_of, detail) for a survivor member: its id, and where it lives."""
    if ":" not in survivor:
        return survivor, survivor
    stream, rid = survivor.split(":", 1)
    return rid, f"duplicate of {stream} {rid}"


def _remove_items(table, live: np.ndarray, ids: list[str], removals: dict, stage: str) -> pa.Table:
    """Move removed image items of live docs into ``item_rejects``."""

    items_col = table.column("items").to_pylist()
    rejects_col = table.column("item_rejects").to_pylist()
    changed = False
    for i in np.flatnonzero(live):
        kept, rejects = [], list(rejects_col[i] or [])
        for k, item in enumerate(items_col[i] or []):
            hit = removals.get(item_member(ids[i], item, k)) if item["kind"] == "image" else None
            if hit is None:
                kept.append(item)
                continue
            dup_of, detail = _describe(hit[1])
            where = f"position {item.get('position')}: {item.get('url') or ''}"
            rejects.append(
                {
                    "stage": stage,
                    "reason": hit[0],
                    "detail": f"{where} {detail}"[:300],
                    "score": hit[2],
                    "duplicate_of": dup_of,
                }
            )
        if len(kept) != len(items_col[i] or []):
            items_col[i], rejects_col[i], changed = kept, rejects, True
    return set_item_columns(table, items_col, rejects_col) if changed else table
