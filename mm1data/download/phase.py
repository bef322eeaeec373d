"""The download phase over Ray datasets: pending image references in, filled or rejected records out.

:func:`download_phase` holds no per-URL or per-record structure on the driver (only counts) and
broadcasts nothing; every global step is a hash shuffle whose partition count grows with the data
(``ceil(rows / download.urls_per_partition)``):

1. **plan** (one shuffle by URL hash): the pending references of every stream (caption pairs with
   ``image`` null and ``url`` set; interleaved image items likewise) and the slim rows of earlier
   checkpointed results are co-partitioned by URL hash. Per URL: no result yet → fetch (round 0);
   a retryable failure and ``retry_failed`` → fetch again (round + 1); else reuse the result.
   So each distinct URL is fetched once per build, across all records and streams.
2. **fetch** (actor pool, :class:`~mm1data.download.fetch.FetchBatch`): results stream into
   checkpoint parts under ``<work>/results/`` as they arrive; a rerun after a crash plans again
   and fetches only URLs without a result.
3. **fill** (joins on URL hash against the checkpoint): a caption pair takes its URL's image
   columns or a ``download`` reject with the URL's reason; an interleaved doc gets its item
   results aggregated per doc (a shuffle by doc key) and joined back: each pending item is filled
   or moved to ``item_rejects``; a doc left with no item is rejected ``empty_document``.
4. **stats** (one group-by): counts per reason, success per source file and per host (top hosts).

Rows are keyed by content (URL hash, doc key), never by arrival order, so the same input gives
the same records whatever order responses arrive in.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.config import DownloadConfig, IngestConfig
from mm1data.download.fetch import FAILED, OK, TODO, URL_RESULT, URL_TABLE, FetchBatch, url_hash
from mm1data.io.fs import arrow_fs, fsspec_fs
from mm1data.schemas import CAPTION_PAIR, IMAGE_FIELDS, INTERLEAVED_DOC

STAGE = "download"
IMAGE_NAMES = [f.name for f in IMAGE_FIELDS]


PLAN_IN = pa.schema(
    [
        pa.field("is_ref", pa.bool_(), nullable=False),  # a pending reference, else a stored result
        pa.field("expected", pa.string()),
        *[f.with_nullable(True) for f in URL_TABLE],
    ]
)
PLAN_OUT = pa.schema(
    [pa.field("todo", pa.bool_(), nullable=False), pa.field("expected", pa.string()), *URL_TABLE]
)

REF = pa.schema(
    [
        pa.field("url_hash", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("expected", pa.string()),
    ]
)
FILL = pa.schema(
    [
        pa.field("r_round", pa.int32()),
        pa.field("r_status", pa.string()),
        pa.field("r_reason", pa.string()),
        pa.field("r_detail", pa.string()),
        *[pa.field(f"r_{f.name}", f.type) for f in IMAGE_FIELDS],
    ]
)
ITEM_FILL = pa.struct([pa.field("item_index", pa.int32()), *[pa.field(f.name[2:], f.type) for f in FILL]])
FACT = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # "reason", "host" or "source"
        pa.field("key", pa.string(), nullable=False),
        pa.field("ok", pa.int64(), nullable=False),  # 1 when the image was had
    ]
)


def partitions(rows: int, cfg: DownloadConfig) -> int:
    """Shuffle partitions for ``rows`` rows: grows with the data, never with the worker count."""
    return max(1, math.ceil(rows / cfg.urls_per_partition))


def record_key(source: str, offset: int, row_id: str) -> str:
    """A stable key of one record (its lineage and id), for joins back onto records."""
    return hashlib.sha256(f"{source}\0{offset}\0{row_id}".encode()).hexdigest()[:32]


# ---------------------------------------------------------------- pure batch functions (workers)


def pending_pairs_mask(table: pa.Table) -> np.ndarray:
    """Caption pairs waiting for their image: ``image`` null, ``url`` set, not rejected."""
    mask = pc.and_(
        pc.and_(pc.is_null(table.column("image")), pc.is_valid(table.column("url"))),
        pc.is_null(table.column("reject")),
    )
    return mask.to_numpy(zero_copy_only=False)


def pending_docs_mask(table: pa.Table) -> np.ndarray:
    """Interleaved docs with at least one pending image item."""
    items = table.column("items").to_pylist()
    rejects = table.column("reject").to_pylist()
    return np.array(
        [
            rej is None and any(_is_pending_item(it) for it in its or [])
            for its, rej in zip(items, rejects, strict=True)
        ],
        dtype=bool,
    )


def _is_pending_item(item: dict) -> bool:
    return item["kind"] == "image" and item["image"] is None and bool(item["url"])


def where(table: pa.Table, mask_fn: Any, keep: bool) -> pa.Table:
    """Rows of ``table`` whose mask is ``keep``."""
    mask = mask_fn(table)
    return table.filter(pa.array(mask if keep else ~mask))


def caption_refs(table: pa.Table) -> pa.Table:
    """One :data:`PLAN_IN` reference row per pending caption pair."""
    t = where(table, pending_pairs_mask, True)
    urls = t.column("url").to_pylist()
    expected = [e if e and ":" in e else None for e in t.column("image_sha256").to_pylist()]
    return _refs(urls, expected)


def item_refs(table: pa.Table) -> pa.Table:
    """One :data:`PLAN_IN` reference row per pending image item of the interleaved docs."""
    urls = [
        it["url"]
        for its, rej in zip(
            table.column("items").to_pylist(), table.column("reject").to_pylist(), strict=True
        )
        if rej is None
        for it in its or []
        if _is_pending_item(it)
    ]
    return _refs(urls, [None] * len(urls))


def _refs(urls: list[str], expected: list[str | None]) -> pa.Table:
    n = len(urls)
    cols = {name: pa.nulls(n, PLAN_IN.field(name).type) for name in PLAN_IN.names}
    cols["is_ref"] = pa.array([True] * n, pa.bool_())
    cols["url_hash"] = pa.array([url_hash(u) for u in urls], pa.string())
    cols["url"] = pa.array(urls, pa.string())
    cols["expected"] = pa.array(expected, pa.string())
    return pa.table(cols, schema=PLAN_IN)


def stored_results(table: pa.Table) -> pa.Table:
    """Checkpointed results as :data:`PLAN_IN` rows (``is_ref`` false)."""
    n = table.num_rows
    cols = {
        name: table.column(name) if name in table.column_names else pa.nulls(n, PLAN_IN.field(name).type)
        for name in PLAN_IN.names
    }
    cols["is_ref"] = pa.array([False] * n, pa.bool_())
    return pa.table(cols, schema=PLAN_IN)


def plan_urls(block: pa.Table, retry_failed: bool) -> pa.Table:
    """One shuffle partition (every row of a URL hash is here) → one :data:`PLAN_OUT` row per
    referenced URL: ``todo`` with the round to fetch, or the latest stored result to reuse."""
    block = block.sort_by([("url_hash", "ascending"), ("is_ref", "descending")])
    rows = block.to_pylist()
    out: list[dict] = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j]["url_hash"] == rows[i]["url_hash"]:
            j += 1
        group = rows[i:j]
        i = j
        refs = [r for r in group if r["is_ref"]]
        if not refs:
            continue  # a stored result no record refers to any more
        expected = min((r["expected"] for r in refs if r["expected"]), default=None)
        stored = [r for r in group if not r["is_ref"]]
        latest = max(stored, key=lambda r: r["round"]) if stored else None
        if latest is None:
            out.append(_todo(refs[0], expected, 0))
        elif retry_failed and latest["status"] == FAILED and latest["retryable"]:
            out.append(_todo(refs[0], expected, latest["round"] + 1))
        else:
            out.append({**{k: latest[k] for k in URL_TABLE.names}, "todo": False, "expected": expected})
    return pa.Table.from_pylist(out, schema=PLAN_OUT)


def _todo(ref: dict, expected: str | None, round_: int) -> dict:
    return {
        "todo": True,
        "url_hash": ref["url_hash"],
        "url": ref["url"],
        "expected": expected,
        "round": round_,
        "status": "todo",
    }


def prepare_pairs(table: pa.Table) -> pa.Table:
    """Pending caption pairs with their URL hash and record key, ready to join the results."""
    keys = [
        record_key(lin["source"], lin["offset"], i)
        for lin, i in zip(table.column("lineage").to_pylist(), table.column("id").to_pylist(), strict=True)
    ]
    hashes = [url_hash(u) for u in table.column("url").to_pylist()]
    return table.append_column("url_hash", pa.array(hashes, pa.string())).append_column(
        "row_key", pa.array(keys, pa.string())
    )


def result_side(table: pa.Table) -> pa.Table:
    """Checkpointed results as the right side of the fill joins (``r_`` columns, URL hash key)."""
    cols = {"url_hash": table.column("url_hash")}
    for f in FILL:
        cols[f.name] = table.column(f.name[2:]).cast(f.type)
    return pa.table(cols)


def latest_round(table: pa.Table, key: str) -> pa.Table:
    """Rows of a fill join with only the latest result round per ``key`` (a refetched URL has a
    row per round in the checkpoint; all of them land in the same join partition)."""
    if table.num_rows == 0:
        return table
    rounds = pc.fill_null(table.column("r_round"), -1)
    t = table.append_column("_r", rounds).sort_by([(key, "ascending"), ("_r", "descending")])
    keys = t.column(key).to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return t.filter(pa.array(first)).drop_columns(["_r"])


def fill_pairs(block: pa.Table) -> pa.Table:
    """Joined pending pairs → CaptionPair rows: the URL's image, or a ``download`` reject."""
    block = latest_round(block, "row_key")
    out = block.to_pylist()
    for row in out:
        if row["r_status"] == OK:
            for name in IMAGE_NAMES:
                row[name] = row[f"r_{name}"]
        else:
            row["image_sha256"] = None
            reason = row["r_reason"] or "not_fetched"
            row["reject"] = _reject(reason, row["r_detail"] or f"url={row['url']}")
    return pa.Table.from_pylist(out, schema=CAPTION_PAIR)


def _reject(reason: str, detail: str | None) -> dict:
    return {"stage": STAGE, "reason": reason, "detail": detail, "score": None, "duplicate_of": None}


def prepare_docs(table: pa.Table) -> pa.Table:
    """Docs with pending items, with their record key."""
    keys = [
        record_key(lin["source"], lin["offset"], i)
        for lin, i in zip(table.column("lineage").to_pylist(), table.column("id").to_pylist(), strict=True)
    ]
    return table.append_column("row_key", pa.array(keys, pa.string()))


def explode_items(table: pa.Table) -> pa.Table:
    """One row per pending item: (row_key, item_index, url_hash, source)."""
    rows = {"row_key": [], "item_index": [], "url_hash": [], "source": []}
    for key, items, lin in zip(
        table.column("row_key").to_pylist(),
        table.column("items").to_pylist(),
        table.column("lineage").to_pylist(),
        strict=True,
    ):
        for n, it in enumerate(items or []):
            if _is_pending_item(it):
                rows["row_key"].append(key)
                rows["item_index"].append(n)
                rows["url_hash"].append(url_hash(it["url"]))
                rows["source"].append(lin["source"])
    schema = pa.schema(
        [
            ("row_key", pa.string()),
            ("item_index", pa.int32()),
            ("url_hash", pa.string()),
            ("source", pa.string()),
        ]
    )
    return pa.table(rows, schema=schema)


def item_key(table: pa.Table) -> pa.Table:
    """Joined item rows with a key per item (doc key + index), to keep one result round each."""
    keys = [
        f"{k}#{i:08d}"
        for k, i in zip(
            table.column("row_key").to_pylist(), table.column("item_index").to_pylist(), strict=True
        )
    ]
    return latest_round(
        table.append_column("item_key", pa.array(keys, pa.string())), "item_key"
    ).drop_columns(["item_key"])


def collect_items(block: pa.Table) -> pa.Table:
    """One shuffle partition by doc key → one row per doc: its item results, by item index."""
    block = block.sort_by([("row_key", "ascending"), ("item_index", "ascending")])
    keys = block.column("row_key").to_pylist()
    fills = [
        {"item_index": r["item_index"], **{f.name[2:]: r[f.name] for f in FILL}}
        for r in block.select(["item_index", *FILL.names]).to_pylist()
    ]
    out_keys: list[str] = []
    out_fills: list[list[dict]] = []
    for key, fill in zip(keys, fills, strict=True):
        if not out_keys or out_keys[-1] != key:
            out_keys.append(key)
            out_fills.append([])
        out_fills[-1].append(fill)
    return pa.table(
        {"row_key": pa.array(out_keys, pa.string()), "fills": pa.array(out_fills, pa.list_(ITEM_FILL))}
    )


def fill_docs(block: pa.Table) -> pa.Table:
    """Docs joined with their item results → InterleavedDoc rows: each pending item filled or
    moved to ``item_rejects``; a doc with no item left is rejected ``empty_document``."""
    out = []
    for row in block.to_pylist():
        fills = {f["item_index"]: f for f in row.pop("fills") or []}
        kept, item_rejects = [], list(row["item_rejects"] or [])
        for n, item in enumerate(row["items"] or []):
            if not _is_pending_item(item):
                kept.append(item)
                continue
            f = fills.get(n)
            if f is not None and f["status"] == OK:
                kept.append({**item, **{name: f[name] for name in IMAGE_NAMES}})
            else:
                reason = (f or {}).get("reason") or "not_fetched"
                item_rejects.append(_reject(reason, f"{item['url']}: {(f or {}).get('detail')}"))
        row.update(items=kept or None, item_rejects=item_rejects)
        if not kept:
            row["reject"] = _reject("empty_document", f"{len(item_rejects)} items rejected")
        out.append(row)
    return pa.Table.from_pylist(out, schema=INTERLEAVED_DOC)


def url_facts(table: pa.Table) -> pa.Table:
    """Stats facts of per-URL rows: one ``reason`` and one ``host`` fact per URL."""
    ok = [1 if s == OK else 0 for s in table.column("status").to_pylist()]
    reasons = [r or "ok" for r in table.column("reason").to_pylist()]
    hosts = [(urlsplit(u).hostname or "") if u else "" for u in table.column("url").to_pylist()]
    n = len(ok)
    return pa.table(
        {"kind": ["reason"] * n + ["host"] * n, "key": reasons + hosts, "ok": ok + ok}, schema=FACT
    )


def source_facts(table: pa.Table, source_col: str | None = None) -> pa.Table:
    """Stats facts of joined references: one ``source`` fact per record (or item) that waited."""
    if source_col is None:
        sources = [lin["source"] for lin in table.column("lineage").to_pylist()]
    else:
        sources = table.column(source_col).to_pylist()
    ok = [1 if s == OK else 0 for s in table.column("r_status").to_pylist()]
    return pa.table({"kind": ["source"] * len(ok), "key": sources, "ok": ok}, schema=FACT)


def top_facts(block: pa.Table, top: int) -> pa.Table:
    """One group-by partition of (kind, key, n, ok) → all reason and source rows, top hosts."""
    hosts = block.filter(pc.equal(block.column("kind"), "host"))
    hosts = hosts.sort_by([("n", "descending"), ("key", "ascending")]).slice(0, top)
    return pa.concat_tables([block.filter(pc.not_equal(block.column("kind"), "host")), hosts])


# ---------------------------------------------------------------- the phase (driver)


def _map(ds, fn, *args: Any, **kw: Any):
    return ds.map_batches(fn, fn_args=args, batch_format="pyarrow", **kw)


def _union(parts: list):
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _schema_safe(ds, schema: pa.Schema):
    """``ds`` materialized with every block in ``schema`` (empty blocks too; see ``with_schema``)."""
    from mm1data.runners.pipeline import with_schema

    return with_schema(ds, schema)


def _stored(work_url: str):
    """The checkpointed results under ``work_url/results`` as a Ray dataset, or None."""
    import ray.data

    fs, path = fsspec_fs(f"{work_url.rstrip('/')}/results")
    if not fs.exists(path):
        return None
    files = sorted(p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1].startswith("part-"))
    if not files:
        return None
    afs, _ = arrow_fs(f"{work_url.rstrip('/')}/results")
    return ray.data.read_parquet(files, filesystem=afs, schema=URL_RESULT)


def download_phase(
    streams: dict[str, Any], cfg: DownloadConfig, ingest: IngestConfig, work_url: str
) -> tuple[dict[str, Any], Any, dict]:
    """Fetch every pending image of ``streams`` (Ray datasets by stream name) and fill or reject it.

    Returns ``(streams, urls, stats)``: the streams with no pending image left (other streams
    untouched), the per-URL result table (:data:`URL_TABLE`, one row per distinct URL referenced),
    and the phase's counts (URLs, fetched now, reused from the checkpoint, per reason, per source,
    top hosts). Checkpoints live under ``work_url`` (e.g. ``OUTPUT/_work/download``)."""
    import ray.data
    from ray.data.aggregate import Count, Sum

    import mm1data.runners.pipeline as rp

    streams = {s: ds.materialize() if s in ("caption", "interleaved") else ds for s, ds in streams.items()}
    ref_parts = []
    if "caption" in streams:
        ref_parts.append(_map(streams["caption"], caption_refs))
    if "interleaved" in streams:
        ref_parts.append(_map(streams["interleaved"], item_refs))
    refs = _schema_safe(_union(ref_parts), PLAN_IN) if ref_parts else None
    n_refs = refs.count() if refs is not None else 0
    empty = ray.data.from_arrow(URL_TABLE.empty_table())
    if n_refs == 0:
        return streams, empty, {"references": 0, "urls": 0, "fetched": 0, "reused": 0}

    # 1. plan: co-partition references and stored results by URL hash
    p = partitions(n_refs, cfg)
    stored = _stored(work_url)
    plan_in = refs
    if stored is not None:
        previous = _map(stored.select_columns(URL_TABLE.names), stored_results)
        plan_in = refs.union(_schema_safe(previous, PLAN_IN))
    plan = _map(
        plan_in.repartition(p, keys=["url_hash"], sort=True), plan_urls, cfg.retry_failed, batch_size=None
    )
    plan = _schema_safe(plan, PLAN_OUT)
    n_urls = plan.count()

    # 2. fetch what has no (good enough) result; results stream into checkpoint parts
    parts_url = f"{work_url.rstrip('/')}/results"
    todo = _map(plan, lambda t: where(t, lambda x: x.column("todo").to_numpy(zero_copy_only=False), True))
    todo = todo.select_columns(TODO.names)
    workers = cfg.workers or max(1, int(ray.available_resources().get("CPU", 1)))
    fetched = todo.map_batches(
        FetchBatch,
        fn_constructor_args=(cfg, ingest, parts_url),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=0.5,
    )
    fetched = _schema_safe(fetched, URL_TABLE)
    n_fetched = fetched.count()
    reused = _map(plan, lambda t: where(t, lambda x: x.column("todo").to_numpy(zero_copy_only=False), False))
    urls = _schema_safe(reused.select_columns(URL_TABLE.names), URL_TABLE).union(fetched)

    # 3. fill: join the checkpointed results (with bytes) back onto records
    results = _map(_stored(work_url), result_side)
    out = dict(streams)
    facts = [_map(urls, url_facts)]
    if "caption" in streams:
        ds = streams["caption"]
        pending = _schema_safe(
            _map(_map(ds, where, pending_pairs_mask, True), prepare_pairs),
            CAPTION_PAIR.append(pa.field("url_hash", pa.string())).append(pa.field("row_key", pa.string())),
        )
        n = pending.count()
        if n:
            joined = pending.join(results, "left_outer", partitions(n, cfg), on=("url_hash",))
            joined = _map(joined, latest_round, "row_key", batch_size=None).materialize()
            facts.append(_map(joined, source_facts))
            filled = _map(joined, fill_pairs)
            rest = _map(ds, where, pending_pairs_mask, False)
            out["caption"] = rp.with_schema(rest.union(filled), CAPTION_PAIR)
    if "interleaved" in streams:
        ds = streams["interleaved"]
        docs = _schema_safe(
            _map(_map(ds, where, pending_docs_mask, True), prepare_docs),
            INTERLEAVED_DOC.append(pa.field("row_key", pa.string())),
        )
        n_docs = docs.count()
        if n_docs:
            items = _map(docs, explode_items)
            n_items = items.count()
            pi = partitions(max(n_items, 1), cfg)
            joined = items.join(results, "left_outer", pi, on=("url_hash",))
            joined = _map(joined, item_key, batch_size=None).materialize()
            facts.append(_map(joined, source_facts, "source"))
            per_doc = _map(
                joined.repartition(partitions(n_docs, cfg), keys=["row_key"], sort=True),
                collect_items,
                batch_size=None,
            )
            filled = docs.join(per_doc, "left_outer", partitions(n_docs, cfg), on=("row_key",))
            filled = _map(_map(filled, lambda t: t.drop_columns(["row_key"])), fill_docs)
            rest = _map(ds, where, pending_docs_mask, False)
            out["interleaved"] = rp.with_schema(rest.union(filled), INTERLEAVED_DOC)

    # 4. stats: one group-by over (kind, key) facts
    fact_ds = _schema_safe(_union(facts), FACT)
    grouped = fact_ds.groupby(["kind", "key"]).aggregate(Count(alias_name="n"), Sum("ok", alias_name="ok"))
    rows = _map(grouped, top_facts, cfg.top_hosts, batch_size=None).take_all()
    stats = _stats(rows, n_refs, n_urls, n_fetched, cfg.top_hosts)
    return out, urls.materialize(), stats


def _stats(rows: list[dict], n_refs: int, n_urls: int, n_fetched: int, top: int) -> dict:
    """The phase's stats from the grouped facts (a few numbers per reason, source and top host)."""

    def rate(ok: int, n: int) -> float:
        return round(ok / n, 6) if n else 0.0

    by_kind: dict[str, list[dict]] = {"reason": [], "source": [], "host": []}
    for r in rows:
        by_kind[r["kind"]].append({"key": r["key"], "n": int(r["n"]), "ok": int(r["ok"] or 0)})
    ok = sum(r["n"] for r in by_kind["reason"] if r["key"] == "ok")
    hosts = sorted(by_kind["host"], key=lambda r: (-r["n"], r["key"]))[:top]
    return {
        "references": n_refs,
        "urls": n_urls,
        "fetched": n_fetched,
        "reused": n_urls - n_fetched,
        "ok": ok,
        "success_rate": rate(ok, n_urls),
        "by_reason": {r["key"]: r["n"] for r in sorted(by_kind["reason"], key=lambda r: r["key"])},
        "sources": {
            r["key"]: {"references": r["n"], "ok": r["ok"], "success_rate": rate(r["ok"], r["n"])}
            for r in sorted(by_kind["source"], key=lambda r: r["key"])
        },
        "top_hosts": [
            {"host": r["key"], "urls": r["n"], "ok": r["ok"], "success_rate": rate(r["ok"], r["n"])}
            for r in hosts
        ],
    }
