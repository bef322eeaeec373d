"""The download phase: records whose image is only a URL in, filled or rejected records out.

:class:`DownloadPhase` runs right after ingest (``--download``, or ``download: {enabled: true}``):
the readers leave URL-only images *pending* (a caption pair with ``image`` null and ``url`` set, an
interleaved image item likewise) and this phase fetches each distinct URL once, whichever records
and streams share it. Every global step is a :func:`~mm1data.runners.shuffle.cogroup` over int64
keys with a pure, vectorized partition function, its partitions sized from row (and image byte)
counts; the driver holds counts only.

1. **plan** (cogroup by URL key): the references of both streams meet the earlier results in the
   checkpoint (``_work/download/results/<variant>/p<P>-<partition>/part-*.parquet``: one folder per
   plan partition of each run, so readers list folders, not parts; image bytes included, kept when
   the phase restarts). Per distinct URL: no result → fetch (round 0); a retryable failure and
   ``retry_failed`` → fetch again (round + 1); else reuse.
2. **fetch** (:func:`~mm1data.download.fetch.fetch_block`, one task per ``urls_per_task`` URLs):
   results stream into new checkpoint parts as responses arrive, so a killed run keeps what it
   fetched; a rerun plans again and fetches only URLs without a result.
3. **stats** (cogroup by host): counts per reason, per source file, and the top hosts.
4. **fill** (lazy; the executor writes it): pending pairs meet the results by URL key and take the
   image columns or a ``download`` reject (``hash_mismatch`` is checked here, per record); pending
   items do the same and their fills meet their docs by doc key: an item is filled or moved to
   ``item_rejects``, a doc with no item left is rejected ``empty_document``.

When the ingest phase left synthetic captions for later (they are keyed by image sha256, which a
URL-only pair has only once fetched), this phase joins them after the fill. Results are chosen by
content (latest round, success first), never by arrival order, and every fill sorts its rows, so
the same input gives the same records whatever order responses arrive in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.config import DOWNLOAD_RUN_ONLY, DownloadConfig, IngestConfig, to_dict
from mm1data.download.fetch import OK, RESULT, TODO, URL_ROW, fetch_block
from mm1data.ingest.base import Render
from mm1data.ingest.synthetic import (
    SYNTHETIC_LINE,
    join_synthetic,
    row_key,
    unmatched_lines,
)
from mm1data.runners.executor import Context, Data, Output, Phase, stream_output
from mm1data.runners.ray_session import remote_task
from mm1data.runners.shuffle import cogroup, hash64, join_indices, partitions_for, sum_counts
from mm1data.runners.workdir import read_files
from mm1data.schemas import CAPTION_PAIR, IMAGE_FIELDS, INTERLEAVED_DOC, ITEM, REJECT_INFO

STAGE = "download"
IMAGE_NAMES = [f.name for f in IMAGE_FIELDS]
HOST = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#]*)"

REF = pa.schema([("k", pa.int64()), ("url", pa.string()), ("source", pa.string())])
"""One reference to a URL: a pending pair or item, and the file it came from."""
STORED = pa.schema([f for f in RESULT if f.name != "image"])
"""The result columns the plan reads from the checkpoint (everything but the bytes)."""
PLAN = pa.schema([f.with_nullable(True) for f in URL_ROW]).append(pa.field("todo", pa.bool_()))
"""Per distinct URL: to fetch (``todo``, result columns null), or its stored result."""
PAIRS = CAPTION_PAIR.append(pa.field("k", pa.int64()))
DOCS = INTERLEAVED_DOC.append(pa.field("_row", pa.int64()))
ITEM_REF = pa.schema([("_row", pa.int64()), ("item", pa.int32()), ("url", pa.string()), ("k", pa.int64())])
"""One pending image item: its doc's key, its index in the doc's items, its URL."""
FILL_COLUMNS = ["k", "url", "round", "status", "reason", "detail", "md5", *IMAGE_NAMES]
FILL_RESULT = pa.schema([RESULT.field(c) for c in FILL_COLUMNS])
SLIM_RESULT = pa.schema([f for f in FILL_RESULT if f.name != "image"])
"""The result columns a fill reads when the records do not carry the bytes."""
ITEM_FILL = pa.schema(
    [
        ("_row", pa.int64()),
        ("item", pa.int32()),
        ("ok", pa.bool_()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        *[(f.name, f.type) for f in IMAGE_FIELDS],
    ]
)
"""The outcome for one pending item, keyed by its doc."""
COUNTS = pa.schema([("key", pa.string()), ("n", pa.int64())])


# --- references (pure, per batch) -----------------------------------------------------------------


def pending_pairs_mask(table: pa.Table) -> np.ndarray:
    """Caption pairs waiting for their image: ``image`` null, ``url`` set, not rejected."""
    mask = pc.and_(
        pc.and_(pc.is_null(table.column("image")), pc.is_valid(table.column("url"))),
        pc.is_null(table.column("reject")),
    )
    return mask.to_numpy(zero_copy_only=False)


def url_keys(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The int64 partition key of URLs (:func:`~mm1data.runners.shuffle.hash64`)."""
    return pa.array(hash64(urls.to_pylist()), pa.int64())


def pending_pairs(table: pa.Table) -> pa.Table:
    """The pending pairs of a batch with their URL key ``k``."""
    t = table.filter(pa.array(pending_pairs_mask(table)))
    return t.append_column("k", url_keys(t.column("url")))


def settled_pairs(table: pa.Table) -> pa.Table:
    """The pairs of a batch that wait for nothing."""
    return table.filter(pa.array(~pending_pairs_mask(table)))


def pair_refs(table: pa.Table) -> pa.Table:
    """One :data:`REF` per pending pair of a batch."""
    t = pending_pairs(table)
    source = pc.struct_field(t.column("lineage"), "source")
    return pa.table([t.column("k"), t.column("url"), source], schema=REF)


def _flat_items(docs: pa.Table) -> tuple[pa.StructArray, np.ndarray, np.ndarray, np.ndarray]:
    """(every item of the live docs, its doc's index, its index in the doc, whether it is pending)."""
    items = docs.column("items").combine_chunks()
    flat = pc.list_flatten(items)
    parent = pc.list_parent_indices(items).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = items.offsets.to_numpy()
    index = np.arange(len(flat), dtype=np.int64) - (offsets[parent] - offsets[0])
    pending = pc.and_(
        pc.and_(pc.equal(pc.struct_field(flat, "kind"), "image"), pc.is_null(pc.struct_field(flat, "image"))),
        pc.is_valid(pc.struct_field(flat, "url")),
    ).to_numpy(zero_copy_only=False)
    live = pc.is_null(docs.column("reject")).to_numpy(zero_copy_only=False)
    return flat, parent, index, pending & live[parent]


def pending_docs_mask(table: pa.Table) -> np.ndarray:
    """Live interleaved docs with at least one pending image item."""
    if table.num_rows == 0:
        return np.zeros(0, bool)
    _, parent, _, pending = _flat_items(table)
    mask = np.zeros(table.num_rows, bool)
    mask[parent[pending]] = True
    return mask


def pending_docs(table: pa.Table) -> pa.Table:
    """The docs of a batch with pending items, with their doc key ``_row``."""
    t = table.filter(pa.array(pending_docs_mask(table)))
    return t.append_column("_row", pa.array(hash64(row_key(t, "interleaved")), pa.int64()))


def settled_docs(table: pa.Table) -> pa.Table:
    """The docs of a batch that wait for nothing."""
    return table.filter(pa.array(~pending_docs_mask(table)))


def item_refs(docs: pa.Table) -> pa.Table:
    """One :data:`ITEM_REF` per pending item of docs from :func:`pending_docs`."""
    flat, parent, index, pending = _flat_items(docs)
    at = np.flatnonzero(pending)
    urls = pc.struct_field(flat, "url").take(pa.array(at))
    rows = docs.column("_row").to_numpy()[parent[at]]
    return pa.table([rows, pa.array(index[at], pa.int32()), urls, url_keys(urls)], schema=ITEM_REF)


def item_source_refs(docs: pa.Table) -> pa.Table:
    """One :data:`REF` per pending item of a batch of docs."""
    flat, parent, _, pending = _flat_items(docs)
    at = np.flatnonzero(pending)
    urls = pc.struct_field(flat, "url").take(pa.array(at))
    sources = pc.struct_field(docs.column("lineage"), "source").take(pa.array(parent[at]))
    return pa.table([url_keys(urls), urls, sources], schema=REF)


# --- partition functions (pure, vectorized) ------------------------------------------------------


def latest_rows(results: pa.Table) -> np.ndarray:
    """Row indices of one result per URL (sorted by URL): the latest round, success first, then by
    content (a URL fetched twice in a round, when Ray retried a task, resolves the same way
    whatever order the parts came in)."""
    if results.num_rows == 0:
        return np.zeros(0, np.int64)
    key = pa.table(
        {
            "url": results.column("url"),
            "round": results.column("round"),
            "failed": pc.not_equal(results.column("status"), OK),
            "sha": results.column("image_sha256"),
            "reason": results.column("reason"),
            "detail": results.column("detail"),
        }
    )
    order = pc.sort_indices(
        key,
        [
            ("url", "ascending"),
            ("round", "descending"),
            ("failed", "ascending"),
            ("sha", "ascending"),
            ("reason", "ascending"),
            ("detail", "ascending"),
        ],
    )
    urls = results.column("url").take(order).combine_chunks()
    first = np.ones(len(urls), bool)
    first[1:] = pc.not_equal(urls.slice(1), urls.slice(0, len(urls) - 1)).to_numpy(zero_copy_only=False)
    return order.to_numpy()[first]


def latest(results: pa.Table) -> pa.Table:
    """One result per URL (see :func:`latest_rows`)."""
    return results.take(pa.array(latest_rows(results)))


def _sources(refs: pa.Table) -> tuple[pa.Array, pa.Array, pa.ListArray]:
    """(distinct URLs sorted, their keys, per URL the references per source file, sorted)."""
    by = refs.group_by(["url", "source"], use_threads=False).aggregate([("k", "count"), ("k", "min")])
    by = by.sort_by([("url", "ascending"), ("source", "ascending")]).combine_chunks()
    urls = by.column("url").chunk(0) if by.num_rows else pa.array([], pa.string())
    first = np.ones(by.num_rows, bool)
    if by.num_rows:
        first[1:] = pc.not_equal(urls.slice(1), urls.slice(0, len(urls) - 1)).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(first)
    offsets = pa.array(np.r_[starts, by.num_rows].astype(np.int32))
    per_source = pa.StructArray.from_arrays(
        [by.column("source").combine_chunks(), by.column("k_count").combine_chunks()],
        fields=list(URL_ROW.field("sources").type.value_type),
    )
    keys = by.column("k_min").combine_chunks().take(pa.array(starts))
    return urls.take(pa.array(starts)), keys, pa.ListArray.from_arrays(offsets, per_source)


def plan_urls(parts: dict[str, pa.Table], retry_failed: bool, need_md5: bool) -> pa.Table:
    """cogroup fn (by URL key): one :data:`PLAN` row per distinct referenced URL: ``todo`` with the
    round to fetch, or its latest stored result to reuse."""
    urls, keys, sources = _sources(parts["refs"])
    stored = latest(parts["stored"])
    n = len(urls)
    li, ri = join_indices(urls, stored.column("url"))
    match = np.full(n, -1, np.int64)
    match[li] = ri
    have = match >= 0
    prior = stored.take(pa.array(np.where(have, match, 0))) if stored.num_rows else None
    todo = ~have
    if prior is not None:
        failed = pc.not_equal(prior.column("status"), OK).to_numpy(zero_copy_only=False)
        retryable = pc.fill_null(prior.column("retryable"), False).to_numpy(zero_copy_only=False)
        no_md5 = pc.is_null(prior.column("md5")).to_numpy(zero_copy_only=False) & ~failed
        todo |= have & ((retry_failed & failed & retryable) | (need_md5 & no_md5))
        rounds = prior.column("round").to_numpy(zero_copy_only=False).astype(np.int32)
        rounds = np.where(have, rounds + todo, 0).astype(np.int32)
    else:
        rounds = np.zeros(n, np.int32)
    reuse = pa.array(have & ~todo)
    cols = {}
    for f in PLAN:
        if f.name in ("url", "k", "round", "sources", "fetched", "todo"):
            continue
        col = prior.column(f.name) if prior is not None else pa.nulls(n, f.type)
        cols[f.name] = pc.if_else(reuse, col, pa.scalar(None, f.type))
    cols.update(
        url=urls,
        k=keys,
        round=pa.array(rounds),
        sources=sources,
        fetched=pa.array(np.zeros(n, bool)),
        todo=pa.array(todo),
    )
    plan = pa.table([cols[f.name] for f in PLAN], schema=PLAN)
    # by host, so that the fetch tasks cut from it get a host's URLs together (one DNS lookup and
    # kept-alive connections per host and task)
    by_host = pa.table({"host": hosts_of(urls), "url": urls})
    return plan.take(pc.sort_indices(by_host, [("host", "ascending"), ("url", "ascending")]))


def _resolve(urls: pa.Array | pa.ChunkedArray, results: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """(the result columns but the bytes, taken row for row with ``urls``; the matching result row
    of each URL or -1; whether it is ok)."""
    chosen = latest_rows(results)
    li, ri = join_indices(urls, results.column("url").take(pa.array(chosen)))
    match = np.full(len(urls), -1, np.int64)
    match[li] = chosen[ri]
    have = match >= 0
    slim = results.drop_columns([c for c in ("image",) if c in results.column_names])
    if results.num_rows == 0:
        return (
            pa.table(
                {c: pa.nulls(len(urls), t) for c, t in zip(slim.column_names, slim.schema.types, strict=True)}
            ),
            match,
            have,
        )
    r = slim.take(pa.array(np.where(have, match, 0)))
    ok = have & pc.equal(r.column("status"), OK).to_numpy(zero_copy_only=False)
    return r, match, ok


def _images(results: pa.Table, match: np.ndarray, good: np.ndarray) -> dict[str, pa.Array]:
    """The image columns of the result rows ``match`` where ``good`` (null elsewhere), in one take
    over one chunk (a take across many chunks of image bytes costs several times the copy). When
    ``results`` has no ``image`` column (records without bytes), ``image`` is null."""
    names = [n for n in IMAGE_NAMES if n in results.column_names]
    if results.num_rows == 0:
        return {f.name: pa.nulls(len(match), f.type) for f in IMAGE_FIELDS}
    rows = pa.array(np.where(good, match, 0), mask=~good)
    t = results.select(names).combine_chunks().take(rows)
    out = {name: t.column(name).combine_chunks() for name in names}
    return {f.name: out.get(f.name, pa.nulls(len(match), f.type)) for f in IMAGE_FIELDS}


def _reject_struct(rejected: np.ndarray, reason, detail) -> pa.StructArray:
    """``download`` rejects where ``rejected`` (null elsewhere)."""
    n = len(rejected)
    reason = (
        pc.fill_null(reason, "").combine_chunks()
        if isinstance(reason, pa.ChunkedArray)
        else pc.fill_null(reason, "")
    )
    detail = detail.combine_chunks() if isinstance(detail, pa.ChunkedArray) else detail
    return pa.StructArray.from_arrays(
        [
            pa.array(np.full(n, STAGE, object), pa.string()),
            reason,
            detail,
            pa.nulls(n, pa.float64()),
            pa.nulls(n, pa.string()),
        ],
        fields=list(REJECT_INFO),
        mask=pa.array(~rejected),
    )


def _lineage_order(table: pa.Table) -> pa.Table:
    """``table`` sorted by lineage (source, offset) and id: the same bytes whatever the input order."""
    lineage = table.column("lineage")
    key = pa.table(
        {
            "source": pc.struct_field(lineage, "source"),
            "offset": pc.struct_field(lineage, "offset"),
            "id": table.column("id"),
        }
    )
    return table.take(
        pc.sort_indices(key, [("source", "ascending"), ("offset", "ascending"), ("id", "ascending")])
    )


def fill_pairs(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (by URL key): pending pairs with their URL's image columns, or a ``download``
    reject with the URL's reason (``hash_mismatch`` when the record's expected digest, kept as
    ``<sha256|md5>:<hex>`` in ``image_sha256``, is not the body's)."""
    pairs, results = _lineage_order(parts["pairs"]), parts["results"]  # (pending pairs carry no bytes)
    if pairs.num_rows == 0:
        return CAPTION_PAIR.empty_table()
    r, match, ok = _resolve(pairs.column("url"), results)
    expected = pairs.column("image_sha256").combine_chunks()
    md5 = pc.fill_null(pc.starts_with(expected, "md5:"), False)
    want = pc.if_else(md5, pc.utf8_slice_codeunits(expected, 4), pc.utf8_slice_codeunits(expected, 7))
    got = pc.if_else(md5, r.column("md5"), r.column("image_sha256"))
    checked = pc.is_valid(expected).to_numpy(zero_copy_only=False)
    same = pc.fill_null(pc.equal(got, want), False).to_numpy(zero_copy_only=False)
    mismatch = ok & checked & ~same
    good = ok & ~mismatch
    algo = pc.if_else(md5, "md5", "sha256")
    mismatch_detail = pc.binary_join_element_wise(algo, pc.fill_null(got, "?"), "!= expected", want, " ")
    fetched_reason = pc.if_else(pa.array(match >= 0), r.column("reason"), "not_fetched")
    reason = pc.if_else(pa.array(mismatch), "hash_mismatch", fetched_reason)
    detail = pc.if_else(pa.array(mismatch), mismatch_detail, r.column("detail"))
    out = pairs.drop_columns(["k"])
    for name, value in _images(results, match, good).items():
        out = out.set_column(out.schema.get_field_index(name), CAPTION_PAIR.field(name), value)
    reject = _reject_struct(~good, reason, detail)
    out = out.set_column(out.schema.get_field_index("reject"), CAPTION_PAIR.field("reject"), reject)
    out = out.cast(CAPTION_PAIR)
    return out


def attach_images(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (by URL key): kept rows of records filled without the bytes (``carry_bytes``
    False) with the bytes of their URL's result; ``k`` dropped."""
    rows, results = parts["rows"], parts["results"]
    if rows.num_rows == 0:
        return rows.drop_columns(["k"])
    _, match, ok = _resolve(rows.column("url"), results)
    if not ok.all():
        raise RuntimeError(f"{int((~ok).sum())} kept rows have no stored image for their URL")
    image = _images(results, match, ok)["image"]
    j = rows.schema.get_field_index("image")
    return rows.set_column(j, rows.schema.field(j), image).drop_columns(["k"])


def fill_items(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (by URL key): one :data:`ITEM_FILL` per pending item: its URL's image columns, or
    the URL's reason."""
    items, results = parts["items"], parts["results"]
    if items.num_rows == 0:
        return ITEM_FILL.empty_table()
    r, match, ok = _resolve(items.column("url"), results)
    reason = pc.if_else(pa.array(match >= 0), r.column("reason"), "not_fetched")
    detail = pc.binary_join_element_wise(items.column("url"), pc.fill_null(r.column("detail"), ""), ": ")
    images = _images(results, match, ok)
    cols = [items.column("_row"), items.column("item"), pa.array(ok), reason, detail]
    return pa.table([*cols, *(images[f.name] for f in IMAGE_FIELDS)], schema=ITEM_FILL)


def fill_docs(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (by doc key): docs with each pending item filled from its fill, or moved to
    ``item_rejects`` (stage ``download``); a doc with no item left is rejected ``empty_document``."""
    docs, fills = _lineage_order(parts["docs"]).combine_chunks(), parts["fills"]
    if docs.num_rows == 0:
        return INTERLEAVED_DOC.empty_table()
    flat, parent, index, pending = _flat_items(docs)
    rows = docs.column("_row").to_numpy()
    at = np.flatnonzero(pending)
    left = pa.table({"r": rows[parent[at]], "i": pa.array(index[at], pa.int32()), "li": at})
    right = pa.table({"r": fills.column("_row"), "i": fills.column("item"), "ri": np.arange(fills.num_rows)})
    joined = left.join(right, ["r", "i"], join_type="inner", use_threads=False)
    match = np.full(len(flat), -1, np.int64)
    match[joined.column("li").to_numpy()] = joined.column("ri").to_numpy()
    have = match >= 0
    f = fills.combine_chunks().take(pa.array(np.where(have, match, 0))) if fills.num_rows else None
    ok = have & pc.fill_null(f.column("ok"), False).to_numpy(zero_copy_only=False) if f is not None else have
    failed = pending & ~ok
    filled = []
    for field in ITEM:
        col = pc.struct_field(flat, field.name)
        if field.name in IMAGE_NAMES and f is not None:
            col = pc.if_else(pa.array(ok), f.column(field.name).combine_chunks(), col)
        filled.append(col)
    new_flat = pa.StructArray.from_arrays(filled, fields=list(ITEM))
    kept = ~failed
    n = docs.num_rows
    counts = np.bincount(parent[kept], minlength=n)
    offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32))
    empty = counts == 0
    items = pa.ListArray.from_arrays(offsets, new_flat.filter(pa.array(kept)), mask=pa.array(empty))
    # item rejects: those the doc had, then this phase's, in item order
    old = docs.column("item_rejects").combine_chunks()
    old_flat = pc.list_flatten(old)
    old_parent = pc.list_parent_indices(old).to_numpy(zero_copy_only=False).astype(np.int64)
    fa = np.flatnonzero(failed)
    if f is not None:
        reason = pc.if_else(pa.array(have[fa]), f.column("reason").take(pa.array(fa)), "not_fetched")
        detail = f.column("detail").take(pa.array(fa))
    else:
        reason = pa.array(["not_fetched"] * len(fa), pa.string())
        detail = pc.struct_field(flat, "url").take(pa.array(fa))
    new = _reject_struct(np.ones(len(fa), bool), reason, detail)
    all_parent = np.r_[old_parent, parent[fa]]
    order = np.lexsort((np.r_[np.zeros(len(old_parent)), np.ones(len(fa))], all_parent))
    values = pa.concat_arrays([old_flat.cast(REJECT_INFO), new]).take(pa.array(order))
    rej_counts = np.bincount(all_parent, minlength=n)
    rej_offsets = pa.array(np.r_[0, np.cumsum(rej_counts)].astype(np.int32))
    item_rejects = pa.ListArray.from_arrays(rej_offsets, values)
    detail_empty = pa.array([f"{k} items rejected" for k in rej_counts], pa.string())
    reject = _reject_struct(empty, pa.array(np.full(n, "empty_document", object), pa.string()), detail_empty)
    out = docs.drop_columns(["_row"])
    for name, value in (("items", items), ("item_rejects", item_rejects), ("reject", reject)):
        out = out.set_column(out.schema.get_field_index(name), INTERLEAVED_DOC.field(name), value)
    return out.cast(INTERLEAVED_DOC)


def hosts_of(urls: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The lower-cased host of each URL ("" when there is none)."""
    return pc.utf8_lower(pc.fill_null(pc.struct_field(pc.extract_regex(urls, HOST), "host"), ""))


def host_key(urls: pa.Table) -> pa.Table:
    """URL rows with the int64 key of their host, ``_h`` (the stats are partitioned by host)."""
    return urls.append_column("_h", pa.array(hash64(hosts_of(urls.column("url")).to_pylist()), pa.int64()))


def _counts(
    prefix: str, keys: pa.Array | pa.ChunkedArray, values: pa.Array | np.ndarray
) -> tuple[list, list]:
    t = pa.table({"key": keys, "v": values}).group_by("key", use_threads=False).aggregate([("v", "sum")])
    return [f"{prefix}{k}" for k in t.column("key").to_pylist()], t.column("v_sum").to_pylist()


def url_stats(parts: dict[str, pa.Table], top: int) -> pa.Table:
    """cogroup fn (by host key): (key, n) counts of the per-URL rows: ``urls``, ``ok``, ``fetched``,
    ``refs``, ``image_bytes``, ``reason|<reason>``, ``source|<file>|refs`` and ``|ok``, and
    ``host|<host>|urls`` and ``|ok`` for this partition's ``top`` hosts (a host's URLs are all in one
    partition, so the driver's merge of these lists is the exact top)."""
    t = parts["urls"]
    if t.num_rows == 0:
        return COUNTS.empty_table()
    ok = pc.equal(t.column("status"), OK).to_numpy(zero_copy_only=False)
    keys = ["urls", "ok", "fetched", "image_bytes"]
    ns = [
        t.num_rows,
        int(ok.sum()),
        int(pc.sum(t.column("fetched").cast(pa.int64())).as_py() or 0),
        int(pc.sum(pc.if_else(pa.array(ok), t.column("image_bytes"), 0)).as_py() or 0),
    ]
    k, v = _counts("reason|", pc.fill_null(t.column("reason"), "ok"), np.ones(t.num_rows, np.int64))
    keys += k
    ns += v
    sources = t.column("sources").combine_chunks()
    flat = pc.list_flatten(sources)
    parent = pc.list_parent_indices(sources).to_numpy(zero_copy_only=False)
    refs = pc.struct_field(flat, "refs").to_numpy(zero_copy_only=False)
    names = pc.struct_field(flat, "source")
    keys.append("refs")
    ns.append(int(refs.sum()))
    for suffix, values in (("refs", refs), ("ok", refs * ok[parent])):
        k, v = _counts("source|", pc.binary_join_element_wise(names, suffix, "|"), values)
        keys += k
        ns += v
    hosts = hosts_of(t.column("url"))
    per = pa.table({"host": hosts, "one": np.ones(t.num_rows, np.int64), "ok": ok.astype(np.int64)})
    per = per.group_by("host", use_threads=False).aggregate([("one", "sum"), ("ok", "sum")])
    per = per.sort_by([("one_sum", "descending"), ("host", "ascending")]).slice(0, top)
    for host, n, good in zip(
        *(per.column(c).to_pylist() for c in ("host", "one_sum", "ok_sum")), strict=True
    ):
        keys += [f"host|{host}|urls", f"host|{host}|ok"]
        ns += [n, good]
    return pa.table({"key": pa.array(keys, pa.string()), "n": pa.array(ns, pa.int64())})


def stats_from_counts(counts: dict[str, int], top: int) -> dict:
    """The phase's ``stats.json`` section from the summed :func:`url_stats` counts."""

    def rate(ok: int, n: int) -> float:
        return round(ok / n, 6) if n else 0.0

    urls, ok = counts.get("urls", 0), counts.get("ok", 0)
    sources: dict[str, dict] = {}
    hosts: dict[str, dict] = {}
    for key, n in counts.items():
        kind, _, rest = key.partition("|")
        if kind in ("source", "host"):
            name, _, what = rest.rpartition("|")
            (sources if kind == "source" else hosts).setdefault(name, {})[what] = n
    top_hosts = sorted(hosts.items(), key=lambda kv: (-kv[1].get("urls", 0), kv[0]))[:top]
    return {
        "references": counts.get("refs", 0),
        "urls": urls,
        "fetched": counts.get("fetched", 0),
        "reused": urls - counts.get("fetched", 0),
        "ok": ok,
        "success_rate": rate(ok, urls),
        "image_bytes": counts.get("image_bytes", 0),
        "by_reason": {k.split("|", 1)[1]: n for k, n in counts.items() if k.startswith("reason|")},
        "sources": {
            s: {
                "references": c.get("refs", 0),
                "ok": c.get("ok", 0),
                "success_rate": rate(c.get("ok", 0), c.get("refs", 0)),
            }
            for s, c in sorted(sources.items())
        },
        "top_hosts": [
            {
                "host": h,
                "urls": c.get("urls", 0),
                "ok": c.get("ok", 0),
                "success_rate": rate(c.get("ok", 0), c.get("urls", 0)),
            }
            for h, c in top_hosts
        ],
    }


# --- Ray plumbing (driver) -----------------------------------------------------------------------


def _num_rows(table: pa.Table) -> int:
    return table.num_rows


def _cut(table: pa.Table, pieces: int) -> tuple[pa.Table, ...]:
    bounds = np.linspace(0, table.num_rows, pieces + 1).astype(int)
    return tuple(table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True))


LIGHT_CPUS = 0.1
"""CPUs of the small tasks that count, cut and concatenate fetch blocks."""

FETCHES_IN_FLIGHT = 512
"""Fetch tasks submitted and not yet finished, at most (the driver holds a bounded number of task
specs and object refs, not one per ``urls_per_task`` URLs)."""


def _concat(*tables: pa.Table) -> pa.Table:
    return pa.concat_tables(tables) if tables else URL_ROW.empty_table()


def fetch_blocks(ds, rows_per_task: int, fetch: Any, args: tuple) -> list:
    """Run ``fetch(block, *args)`` over ``ds``'s rows in tables of at most ``rows_per_task`` rows
    (one small task cuts each block, so fetching spreads over as many tasks as the URLs need) and
    return one object ref per block of ``ds``: its fetch results, concatenated. At most
    :data:`FETCHES_IN_FLIGHT` fetch tasks are pending at a time, so what the driver holds grows with
    the blocks of ``ds`` (its partitions), not with the URLs."""
    import ray

    refs = ds.to_arrow_refs()
    rows = ray.get([remote_task(_num_rows, LIGHT_CPUS).remote(r) for r in refs])
    merged: list = []
    pending: list[tuple[Any, int]] = []  # (merged ref, its fetch tasks), oldest first
    for ref, n in zip(refs, rows, strict=True):
        pieces = math.ceil(n / rows_per_task)
        if pieces == 0:
            continue
        cut = remote_task(_cut, LIGHT_CPUS).options(num_returns=pieces)
        blocks = [ref] if pieces == 1 else cut.remote(ref, pieces)
        merged.append(remote_task(_concat, LIGHT_CPUS).remote(*(fetch.remote(b, *args) for b in blocks)))
        pending.append((merged[-1], pieces))
        while sum(p for _, p in pending) > FETCHES_IN_FLIGHT and len(pending) > 1:
            ray.wait([pending.pop(0)[0]], fetch_local=False)
    return merged


def part_folders(url: str) -> list[str]:
    """The folders of checkpoint parts under ``url`` (one per plan partition of each run), in name
    order, and ``url`` itself when parts lie directly in it (the layout before folders)."""
    from mm1data.io.fs import fsspec_fs

    fs, path = fsspec_fs(url)
    entries = fs.ls(path, detail=True) if fs.exists(path) else []
    kinds = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["type"] for e in entries}
    root = url.rstrip("/")
    folders = [f"{root}/{n}" for n, kind in sorted(kinds.items()) if kind == "directory"]
    flat = any(n.startswith("part-") and kind != "directory" for n, kind in kinds.items())
    return folders + [root] if flat else folders


def read_parts(url: str, columns: list[str] | None, schema: pa.Schema):
    """The checkpointed results under ``url`` (only ``columns``) as a Ray dataset: one read task per
    folder of :func:`part_folders` (the driver lists folders, never parts); an empty dataset of
    ``schema`` when there is none."""
    import ray.data

    folders = part_folders(url)
    if not folders:
        return ray.data.from_arrow(schema.empty_table())
    ds = ray.data.from_items([{"path": f} for f in folders], override_num_blocks=len(folders))
    return ds.map_batches(read_folders, fn_args=(columns,), batch_size=1, batch_format="pyarrow")


def read_folders(batch: pa.Table, columns: list[str] | None) -> Iterator[pa.Table]:
    """Ray Data UDF: the rows of the ``part-*`` files in each folder named in ``batch`` (in name
    order), a row group at a time."""
    from mm1data.io.fs import fsspec_fs

    for url in batch.column("path").to_pylist():
        fs, path = fsspec_fs(url)
        names = (p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
        parts = sorted(n for n in names if n.startswith("part-"))
        yield from read_files(pa.table({"path": [f"{url}/{p}" for p in parts]}), columns)


def _map(ds, fn, *args: Any):
    return ds.map_batches(fn, fn_args=args, batch_format="pyarrow")


def _union(datasets: list):
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def _is_todo(table: pa.Table) -> pa.Table:
    return table.filter(table.column("todo")).select(TODO.names).cast(TODO)


def _is_reused(table: pa.Table) -> pa.Table:
    return table.filter(pc.invert(table.column("todo"))).drop_columns(["todo"]).cast(URL_ROW)


class DownloadPhase(Phase):
    """Fetch every pending image of the caption and interleaved streams (see the module doc).

    ``render`` stores a square JPEG of each image instead of its bytes (``mm1data download
    --image-size``); ``synthetic`` joins the synthetic captions the ingest phase left for after the
    download; ``urls_to`` is where :meth:`finish` publishes the per-URL table, relative to the output
    (None: only in ``_work/download/urls``). With ``carry_bytes`` False the filled pairs get every
    image column but the bytes, which stay in the results (``mm1data download``: its shards take
    them from there, so the images are not copied through one more checkpoint)."""

    name = "download"
    keep = ("results",)

    def __init__(
        self,
        cfg: DownloadConfig,
        ingest: IngestConfig,
        render: Render | None = None,
        synthetic: bool = False,
        urls_to: str | None = "download/urls",
        carry_bytes: bool = True,
    ) -> None:
        self.cfg, self.ingest, self.render, self.synthetic = cfg, ingest, render, synthetic
        self.urls_to, self.carry_bytes = urls_to, carry_bytes

    @property
    def results(self) -> tuple[str, ...]:
        """Where the results are, inside the work folder."""
        return (self.name, "results", self.variant)

    @property
    def variant(self) -> str:
        """The results folder: images as fetched, or rendered."""
        return "original" if self.render is None else f"jpeg-{self.render.size}-q{self.render.quality}"

    def fingerprint(self) -> Any:
        cfg = {k: v for k, v in to_dict(self.cfg).items() if k not in DOWNLOAD_RUN_ONLY}
        limits = {k: v for k, v in to_dict(self.ingest).items() if k != "download"}
        return [cfg, limits, to_dict(self.render), self.synthetic, self.carry_bytes]

    def declare(self, data: Data) -> tuple[Output, ...]:
        streams = [s for s in ("caption", "interleaved") if s in data]
        if self.synthetic and "synthetic_caption" in data:
            streams.append("synthetic_caption")
        return (*(stream_output(s) for s in streams), Output("urls", None, URL_ROW))

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        import ray.data

        cfg = self.cfg
        parts_url = ctx.work.url(*self.results)
        captions = data.kept("caption") if "caption" in data else None
        docs = data.kept("interleaved") if "interleaved" in data else None

        # 1. plan: references and stored results meet by URL key
        refs = []
        if captions is not None:
            refs.append(_map(captions, pair_refs))
        if docs is not None:
            refs.append(_map(docs, item_source_refs))
        refs_ds = (_union(refs) if refs else ray.data.from_arrow(REF.empty_table())).materialize()
        n_refs = refs_ds.count()  # (materialized: from block metadata, no job)
        stored = read_parts(parts_url, STORED.names, STORED)
        stored = stored.materialize()
        n_stored = stored.count()
        need_md5 = cfg.hash_col is not None and cfg.hash_type == "md5"
        plan_parts = partitions_for(n_refs + n_stored, cfg.rows_per_partition)
        plan = cogroup(
            {"refs": refs_ds, "stored": stored},
            {"refs": "k", "stored": "k"},
            plan_parts,
            plan_urls,
            (cfg.retry_failed, need_md5),
            {"refs": REF, "stored": STORED},
        ).materialize()

        # 2. fetch what has no (good enough) result; results stream into checkpoint parts
        # (plain tasks, not a Ray Data map: its resource budget shares the CPUs among the
        # operators of the plan and ran one fetch task at a time on two CPUs)
        fetch = ray.remote(fetch_block).options(num_cpus=cfg.task_cpus)
        args = (cfg, self.ingest, self.render, parts_url, plan_parts)
        done = fetch_blocks(_map(plan, _is_todo), cfg.urls_per_task, fetch, args)
        fetched = ray.data.from_arrow_refs(done) if done else ray.data.from_arrow(URL_ROW.empty_table())
        urls = _map(plan, _is_reused).union(fetched).materialize()

        # 3. stats, partitioned by host
        n_urls = urls.count()
        counts = sum_counts(
            cogroup(
                {"urls": _map(urls, host_key)},
                {"urls": "_h"},
                partitions_for(n_urls, cfg.rows_per_partition),
                url_stats,
                (cfg.top_hosts,),
                {"urls": URL_ROW.append(pa.field("_h", pa.int64()))},
            )
        )
        stats = stats_from_counts(counts, cfg.top_hosts)
        ctx.info[self.name] = stats

        # 4. fill (lazy): records meet their URLs' results
        results = read_parts(parts_url, FILL_COLUMNS, FILL_RESULT)
        slim = read_parts(parts_url, SLIM_RESULT.names, SLIM_RESULT)
        fill_parts = max(
            partitions_for(n_refs + n_urls, cfg.rows_per_partition),
            partitions_for(stats["image_bytes"], cfg.bytes_per_partition),
        )
        out: dict[str, Any] = {"urls": urls}
        if captions is not None:
            filled = cogroup(
                {"pairs": _map(captions, pending_pairs), "results": results if self.carry_bytes else slim},
                {"pairs": "k", "results": "k"},
                fill_parts if self.carry_bytes else partitions_for(n_refs + n_urls, cfg.rows_per_partition),
                fill_pairs,
                (),
                {"pairs": PAIRS, "results": FILL_RESULT if self.carry_bytes else SLIM_RESULT},
            )
            out["caption"] = _map(captions, settled_pairs).union(filled)
        if docs is not None:
            waiting = _map(docs, pending_docs).materialize()
            fills = cogroup(
                {"items": _map(waiting, item_refs), "results": results},
                {"items": "k", "results": "k"},
                fill_parts,
                fill_items,
                (),
                {"items": ITEM_REF, "results": FILL_RESULT},
            )
            filled = cogroup(
                {"docs": waiting, "fills": fills},
                {"docs": "_row", "fills": "_row"},
                fill_parts,
                fill_docs,
                (),
                {"docs": DOCS, "fills": ITEM_FILL},
            )
            out["interleaved"] = _map(docs, settled_docs).union(filled)
        if self.synthetic and "synthetic_caption" in data:
            lines = data.kept("synthetic_caption")
            if "caption" in out:
                pairs = out["caption"].materialize()
                lines = lines.materialize()
                out["caption"], out["synthetic_caption"] = join_synthetic(
                    pairs, lines, pairs.count(), lines.count()
                )
            else:
                out["synthetic_caption"] = _map(lines, unmatched_lines)
        return out

    def finish(self, ctx: Context, data: Data) -> None:
        """Publish the per-URL table as ``<output>/<urls_to>/part-*.parquet`` (the checkpoint's files)."""
        if self.urls_to is None or "urls" not in data:
            return
        from mm1data.io.fs import fsspec_fs

        stored = data.outputs["urls"]
        fs, src = fsspec_fs(ctx.work.url(stored.phase, "urls"))
        out_fs, dst = fsspec_fs(f"{ctx.root}/{self.urls_to}")
        if out_fs.exists(dst):
            out_fs.rm(dst, recursive=True)
        out_fs.makedirs(dst, exist_ok=True)
        files = sorted(
            p
            for p in fs.ls(src, detail=False)
            if p.endswith(".parquet") and not p.endswith("_schema.parquet")
        )
        for i, p in enumerate(files):
            out_fs.pipe_file(f"{dst}/part-{i:05d}.parquet", fs.cat_file(p))
        if not files:
            import pyarrow.parquet as pq

            with out_fs.open(f"{dst}/part-00000.parquet", "wb") as f:
                pq.write_table(URL_ROW.empty_table(), f)


__all__ = ["DownloadPhase", "SYNTHETIC_LINE"]
