"""Pure functions of dedup: member ids, the survivor rule, connected components, routing removals.

A *member* is what dedup deduplicates: a record (``"<stream>:<id>"``) or an image inside an
interleaved doc (``"interleaved:<doc id>#<position>"``). Every member has an int64 id, the
:func:`~mm1data.runners.shuffle.hash64` of its name; pairs, components and joins use only these
ids (a 64-bit collision among 10⁹ members has a probability of about 3 %; it would merge two
members' edges, never lose a record).

In every component one member survives, chosen by the **survivor rule**:

1. the higher ``quality_score`` (a missing score ranks below any score);
2. then the stream: caption before interleaved before text (a picture is kept with its caption
   pair, text is kept in the richer interleaved doc);
3. then the smallest id (string order).

:func:`rank` encodes that rule as one string whose order is the rule, so survivors come from a
``min`` per component, independent of the order pairs arrive in. Every other member is removed
with the survivor in ``duplicate_of``, reason ``exact_duplicate`` when its exact digest equals the
survivor's (``near_duplicate`` otherwise) and, as score, the highest similarity of its own pairs.

Components come from :func:`local_components` (one task, integer edges only) or from rounds of
:func:`large_star` and :func:`small_star` (Kiveris et al. 2014, "Connected Components in
MapReduce and Beyond"), each a co-partitioned step over edges keyed by node.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.stages import live_mask, reject_rows, set_item_columns

STREAM_ORDER = ("caption", "interleaved", "text")
STAGE = "dedup"

EDGE = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("sim", pa.float64())])
"""An undirected duplicate pair of member ids (a < b) and its similarity."""
LABEL = pa.schema([("member", pa.int64()), ("comp", pa.int64())])
"""A member and its component (the smallest member id in it)."""


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


def rank(member: str, quality: float | None) -> str:
    """:func:`survivor_key` as a string with the same order (fixed-width prefix, then the id)."""
    missing, negq, stream, rid = survivor_key(member, quality)
    bits = np.array([negq], dtype=np.float64).view(np.uint64)[0]
    sortable = (
        (~bits if bits >> np.uint64(63) else bits | np.uint64(1 << 63)) if not missing else np.uint64(0)
    )
    return f"{missing}{int(sortable):016x}{stream}{rid}"


# --- connected components -------------------------------------------------------------------------


def undirected(a: np.ndarray, b: np.ndarray, sim: np.ndarray | None = None) -> pa.Table:
    """:data:`EDGE` rows with a < b (self-loops dropped)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    keep = a != b
    lo, hi = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    s = np.ones(len(lo)) if sim is None else np.asarray(sim, np.float64)[keep]
    return pa.table([lo, hi, s], schema=EDGE)


def local_components(edges: pa.Table) -> pa.Table:
    """:data:`LABEL` of every node of ``edges`` (one process: integer arrays, scipy's CC)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b = edges.column("a").to_numpy(), edges.column("b").to_numpy()
    if len(a) == 0:
        return LABEL.empty_table()
    nodes = np.unique(np.concatenate([a, b]))
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    graph = coo_matrix((np.ones(len(ia), np.int8), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(smallest, labels, nodes)
    return pa.table([nodes, smallest[labels]], schema=LABEL)


DIRECTED = pa.schema([("u", pa.int64()), ("v", pa.int64())])


def both_directions(edges: pa.Table) -> pa.Table:
    """Each undirected edge as (u, v) and (v, u), for steps keyed by node."""
    a, b = edges.column("a"), edges.column("b")
    return pa.table(
        [
            pa.concat_arrays([a.combine_chunks(), b.combine_chunks()]),
            pa.concat_arrays([b.combine_chunks(), a.combine_chunks()]),
        ],
        schema=DIRECTED,
    )


def by_larger(edges: pa.Table) -> pa.Table:
    """Each undirected edge as (u = larger end, v = smaller end), for small-star."""
    return pa.table([edges.column("b"), edges.column("a")], schema=DIRECTED)


def _segment_min(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (u, v) rows sorted by u: per row, min(u, min of v over the rows with the same u)."""
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    mins = np.minimum.reduceat(v, starts)
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(u)]))
    return np.minimum(u, mins[seg]), seg


def _neighbourhood_min(edges: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (u, v) edge rows sorted by (u, v), and per row the smallest of u and its neighbours."""
    u, v = edges.column("u").to_numpy(), edges.column("v").to_numpy()
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    return u, v, _segment_min(u, v)[0]


def large_star(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (keyed by u, both directions of every edge): each node links its larger
    neighbours to the smallest node of its neighbourhood."""
    t = parts["e"]
    if t.num_rows == 0:
        return EDGE.empty_table()
    u, v, m = _neighbourhood_min(t)
    keep = v > u
    return _unique_edges(m[keep], v[keep])


def small_star(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (keyed by u, the larger end of every edge): each node and its smaller neighbours
    link to the smallest of them."""
    t = parts["e"]
    if t.num_rows == 0:
        return EDGE.empty_table()
    u, v, m = _neighbourhood_min(t)
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    a = np.concatenate([m, m[starts]])
    b = np.concatenate([v, u[starts]])
    keep = a != b
    return _unique_edges(a[keep], b[keep])


def _unique_edges(a: np.ndarray, b: np.ndarray) -> pa.Table:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if len(lo) == 0:
        return EDGE.empty_table()
    pairs = np.unique(np.stack([lo, hi], axis=1), axis=0)
    return pa.table([pairs[:, 0], pairs[:, 1], np.ones(len(pairs))], schema=EDGE)


def star_labels(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (keyed by u, both directions) on converged stars: each node's smallest neighbour
    or itself is its component."""
    t = parts["e"]
    if t.num_rows == 0:
        return LABEL.empty_table()
    u, v, m = _neighbourhood_min(t)
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    return pa.table([u[starts], m[starts]], schema=LABEL)


def edge_checksum(edges: pa.Table) -> pa.Table:
    """(key, n) rows: edge count and a wrapping sum of mixed edge hashes (to detect convergence)."""
    from mm1data.runners.shuffle import mix64

    a, b = edges.column("a").to_numpy(), edges.column("b").to_numpy()
    h = mix64(a ^ mix64(b)).view(np.uint64)
    total = int(np.sum(h, dtype=np.uint64) & np.uint64(0x7FFFFFFFFFFFFFFF))
    return pa.table({"key": ["edges", "sum"], "n": pa.array([len(a), total], pa.int64())})


# --- survivors and removals ------------------------------------------------------------------------

REMOVAL = pa.schema(
    [
        ("target", pa.int64()),  # the record member id the removal applies to (a doc for an image item)
        ("name", pa.string()),  # the removed member's name
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),  # the survivor's member name, or the eval set's name
        ("score", pa.float64()),
    ]
)


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


def removals_dict(table: pa.Table) -> dict[str, tuple[str, str, float]]:
    """``{member name: (reason, duplicate_of, score)}`` of :data:`REMOVAL` rows (one partition's)."""
    cols = [table.column(c).to_pylist() for c in ("name", "reason", "duplicate_of", "score")]
    return {n: (r, d, s) for n, r, d, s in zip(*cols, strict=True)}


def is_true(col) -> np.ndarray:
    """Numpy bool of a boolean Arrow column (nulls false)."""
    return pc.fill_null(col, False).to_numpy(zero_copy_only=False)
