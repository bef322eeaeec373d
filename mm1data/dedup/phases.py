"""The dedup phase on Ray Data: index → bucket edges → confirm → components → survivors → apply.

Every step but the first is one co-partitioned step (:func:`mm1data.runners.shuffle.cogroup`)
over integer member ids, so no process holds more than a partition of the index, and nothing per
member ever reaches the driver.

1. **index** (one ``map_batches`` per stream, reading text and the image columns ingest recorded:
   no image is decoded): per live member one ``MEMBER`` row (id, name, survivor rank, exact
   digest), one ``SIGNATURE`` row (its MinHash signature, once), and bucket rows: ``exact_text``
   (normalized-text hash), ``exact_image`` (sha256), ``minhash_text`` (one per LSH band, no
   payload) and ``image_hash`` (one per Hamming band, with the 64-bit hash). Decontaminated
   members get one ``DECONTAMINATED`` row and no other;
2. **bucket edges** (keyed by bucket): exact groups and MinHash buckets become star edges from
   their smallest member id; image buckets are compared in full, one hash against the rest at a
   time (equal hashes first collapse to one, so a picture repeated 10⁵ times costs 10⁵ edges,
   not 10¹⁰ comparisons);
3. **confirm** (keyed by one end, then the other): a MinHash candidate pair keeps when the
   estimated Jaccard of the two signatures is at least ``threshold``;
4. **components**: in one task when the edges are few, else rounds of large-star / small-star;
5. **survivors** (keyed by member, then by component): the survivor rule of
   :mod:`mm1data.dedup.components`; every other member becomes a removal;
6. **apply** (keyed by record): removals become rejects, or item rejects of their doc.

Text kinds run first (exact and near-duplicate texts form one graph: exact copies have equal
signatures, so they share every MinHash bucket), then image kinds among the images of the docs
still alive, so an image inside a doc removed as a whole never survives (or wins) an image
cluster. Same input, same survivors, whatever the number of files, blocks or workers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.config import DedupConfig, to_dict
from mm1data.dedup import image_hash, minhash
from mm1data.dedup.components import (
    DIRECTED,
    EDGE,
    LABEL,
    REMOVAL,
    apply_removals,
    both_directions,
    by_larger,
    edge_checksum,
    large_star,
    local_components,
    rank,
    removals_dict,
    small_star,
    star_labels,
    undirected,
)
from mm1data.dedup.exact import live_images, live_texts, text_key
from mm1data.runners.executor import Context, Data, Output, Phase, stream_output
from mm1data.runners.pipeline import map_in_slices
from mm1data.runners.shuffle import (
    ROWS_PER_TASK,
    LocalTables,
    RayDatasets,
    cogroup,
    hash64,
    join_indices,
    partitions_for,
)
from mm1data.schemas import STREAM_SCHEMAS, STREAMS, subschema

MEMBER, EXACT_TEXT, EXACT_IMAGE, MINHASH, IMAGE_HASH, SIGNATURE, DECONTAMINATED = range(7)
KIND_NAMES = {
    EXACT_TEXT: "exact_text",
    EXACT_IMAGE: "exact_image",
    MINHASH: "minhash_text",
    IMAGE_HASH: "image_hash",
}
TEXT_STREAMS = ("interleaved", "text")
IMAGE_STREAMS = ("caption", "interleaved")
ROWS_PER_PARTITION = ROWS_PER_TASK
LOCAL_EDGES = 2 * ROWS_PER_TASK
"""Up to this many edges, components are found in one task over integer arrays."""
MAX_ROUNDS = 64

INDEX = pa.schema(
    [
        ("kind", pa.int8()),
        ("key", pa.int64()),  # bucket key (kinds 1-4), else the member id
        ("member", pa.int64()),
        ("check", pa.int64()),  # exact kinds: more digest bits; image_hash: the hash; MEMBER: exact digest
        ("name", pa.string()),  # MEMBER and DECONTAMINATED: the member name
        ("rank", pa.string()),  # MEMBER: survivor rule key (smallest survives)
        ("doc", pa.int64()),  # image items: the member id of their doc (0 otherwise)
        ("payload", pa.binary()),  # SIGNATURE: MinHash values (uint32 × num_perm); DECONTAMINATED: eval item
        ("score", pa.float64()),  # DECONTAMINATED: the match score
    ]
)


def _digest_words(hex_digest: str) -> tuple[int, int]:
    """Two signed int64 words of a hex digest (bucket key, check)."""
    a, b = int(hex_digest[:16], 16), int(hex_digest[16:32], 16)
    return a - (1 << 64) if a >= 1 << 63 else a, b - (1 << 64) if b >= 1 << 63 else b


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


class _Rows:
    """Accumulates INDEX rows column-wise."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {f.name: [] for f in INDEX}

    def add(
        self,
        kind: int,
        key: int,
        member: int,
        check: int = 0,
        name=None,
        rank_=None,
        doc: int = 0,
        payload=None,
        score=None,
    ) -> None:
        for c, v in zip(
            INDEX.names, (kind, key, member, check, name, rank_, doc, payload, score), strict=True
        ):
            self.cols[c].append(v)

    def table(self) -> pa.Table:
        return pa.table([pa.array(self.cols[f.name], f.type) for f in INDEX], schema=INDEX)


INDEX_BATCH_ROWS = 256
"""Records per index batch: a batch's texts become Python words and shingles at once, so this bounds
a worker's memory (Ray Data's default of 1,024 rows of 3,000-word docs peaked near 400 MiB)."""


def index_batch(table: pa.Table, stream: str, cfg: DedupConfig, eval_index=None) -> pa.Table:
    """All :data:`INDEX` rows of one stream batch (the map step)."""
    out = _Rows()
    gone: set[str] = set()
    if eval_index is not None:
        from mm1data.dedup.decontaminate import check_batch

        hits = check_batch(table, stream, eval_index, cfg)
        for m, ev, sc in zip(*(hits.column(c).to_pylist() for c in ("member", "eval", "score")), strict=True):
            if ev is not None:
                gone.add(m)
                mid = int(hash64([m])[0])
                out.add(DECONTAMINATED, mid, mid, name=m, payload=ev.encode(), score=sc, doc=_doc_of(m))
    if stream in TEXT_STREAMS and (cfg.exact_text or cfg.minhash):
        members, texts, quality = live_texts(table, stream)
        keep = [i for i, m in enumerate(members) if m not in gone]
        members, texts, quality = (
            [members[i] for i in keep],
            [texts[i] for i in keep],
            [quality[i] for i in keep],
        )
        ids = hash64(members)
        digests = [_digest_words(text_key(t)) for t in texts]
        for m, mid, q, (k, c) in zip(members, ids.tolist(), quality, digests, strict=True):
            out.add(MEMBER, mid, mid, c, m, rank(m, q))
            if cfg.exact_text:
                out.add(EXACT_TEXT, k, mid, c)
        if cfg.minhash and texts:
            sig, ok = minhash.text_signatures(texts, cfg.num_perm, cfg.ngram, cfg.seed)
            bands = minhash.band_keys(sig, cfg.bands, cfg.rows).view(np.int64)
            for j in np.flatnonzero(ok).tolist():
                mid = int(ids[j])
                out.add(SIGNATURE, mid, mid, payload=sig[j].tobytes())
                for b in bands[j].tolist():
                    out.add(MINHASH, b, mid)
    if stream in IMAGE_STREAMS and (cfg.exact_image or cfg.image_hash):
        for m, q, image, meta in live_images(table, stream):
            if m in gone or (stream == "interleaved" and m.rsplit("#", 1)[0] in gone):
                continue
            mid, doc = int(hash64([m])[0]), _doc_of(m)
            sha = meta["image_sha256"] or _sha256(image.as_py())
            k, c = _digest_words(sha)
            out.add(MEMBER, mid, mid, c, m, rank(m, q), doc)
            if cfg.exact_image:
                out.add(EXACT_IMAGE, k, mid, c, doc=doc)
            h = meta.get(cfg.image_hash_kind)
            h = image_hash.image_hash(image.as_py(), cfg.image_hash_kind) if h is None else h
            if cfg.image_hash and h is not None:
                for b in image_hash.band_keys(np.array([h], np.uint64), cfg.hamming_radius)[0].tolist():
                    out.add(IMAGE_HASH, _signed(int(b)), mid, _signed(int(h)), doc=doc)
    return out.table()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _doc_of(member: str) -> int:
    """The member id of the doc an image item belongs to (0 for a record)."""
    if member.startswith("interleaved:") and "#" in member:
        return int(hash64([member.rsplit("#", 1)[0]])[0])
    return 0


# --- step 2: bucket edges -----------------------------------------------------------------------

CANDIDATE = pa.schema(
    [("a", pa.int64()), ("b", pa.int64()), ("sim", pa.float64()), ("confirmed", pa.bool_())]
)


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal values in a sorted array."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, np.int64)
    return starts, np.r_[starts[1:], len(keys)].astype(np.int64)


def _stars(group: np.ndarray, member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Star edges (smallest member of each group → each other member) of rows sorted by (group, member)."""
    starts, ends = _runs(group)
    first = np.repeat(member[starts], ends - starts)
    keep = member != first
    return first[keep], member[keep]


def bucket_edges(parts: dict[str, pa.Table], radius: int) -> pa.Table:
    """cogroup fn (bucket rows keyed by bucket): exact groups and MinHash buckets as star edges,
    image buckets compared in full within the Hamming ``radius``."""
    t = parts["b"]
    if t.num_rows == 0:
        return CANDIDATE.empty_table()
    kind, key, member, check = (t.column(c).to_numpy() for c in ("kind", "key", "member", "check"))
    out = []
    exact = (kind == EXACT_TEXT) | (kind == EXACT_IMAGE)
    for k, confirmed in ((exact, True), (kind == MINHASH, False)):
        kk, ky, ch, mm = kind[k], key[k], (check[k] if confirmed else np.zeros(k.sum(), np.int64)), member[k]
        order = np.lexsort((mm, ch, ky, kk))
        group = np.stack([kk[order].astype(np.int64), ky[order], ch[order]], axis=1)
        gid = (
            np.r_[0, np.cumsum(np.any(group[1:] != group[:-1], axis=1))]
            if len(order)
            else np.empty(0, np.int64)
        )
        a, b = _stars(gid, mm[order])
        out.append(_candidates(a, b, np.ones(len(a)) if confirmed else np.full(len(a), np.nan), confirmed))
    img = kind == IMAGE_HASH
    if img.any():
        a, b, sim = _hamming_pairs(key[img], member[img], check[img], radius)
        out.append(_candidates(a, b, sim, True))
    return pa.concat_tables(out)


def _candidates(a, b, sim, confirmed: bool) -> pa.Table:
    n = len(a)
    return pa.table(
        [
            np.asarray(a, np.int64),
            np.asarray(b, np.int64),
            np.asarray(sim, np.float64),
            np.full(n, confirmed),
        ],
        schema=CANDIDATE,
    )


def _hamming_pairs(key: np.ndarray, member: np.ndarray, value: np.ndarray, radius: int):
    """Pairs within ``radius`` bits in each bucket: members with equal hashes join the smallest
    of them; distinct hashes are compared one against the rest of the bucket (no k² arrays)."""
    order = np.lexsort((member, value, key))
    key, member, value = key[order], member[order], value[order]
    a_out, b_out, s_out = [], [], []
    same_k, same_v = _runs(np.stack([key, value], axis=1).view([("k", np.int64), ("v", np.int64)]).ravel())
    rep = member[same_k]  # the smallest member of each (bucket, hash) run represents it
    a_out.append(np.repeat(rep, same_v - same_k))
    b_out.append(member)
    s_out.append(np.ones(len(member)))
    rk, rv = key[same_k], value[same_k].view(np.uint64)
    for s, e in zip(*_runs(rk), strict=True):
        for i in range(s, e - 1):
            d = image_hash.hamming(rv[i], rv[i + 1 : e])
            near = np.flatnonzero(d <= radius)
            if len(near):
                a_out.append(np.full(len(near), rep[i]))
                b_out.append(rep[i + 1 + near])
                s_out.append(image_hash.similarity(d[near]))
    a, b, sim = np.concatenate(a_out), np.concatenate(b_out), np.concatenate(s_out)
    keep = a != b
    return a[keep], b[keep], sim[keep]


# --- step 3: confirm MinHash candidates ------------------------------------------------------------

SIGS = pa.schema([("member", pa.int64()), ("payload", pa.binary())])
WITH_SIG = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("sig_a", pa.binary())])


def attach_first_signature(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (keyed by ``a``): distinct candidate pairs with the signature of ``a``."""
    e, s = parts["e"], parts["s"]
    if e.num_rows == 0:
        return WITH_SIG.empty_table()
    pairs = np.unique(np.stack([e.column("a").to_numpy(), e.column("b").to_numpy()], axis=1), axis=0)
    li, si = join_indices(pa.array(pairs[:, 0]), s.column("member"))
    return pa.table([pairs[li, 0], pairs[li, 1], s.column("payload").take(pa.array(si))], schema=WITH_SIG)


def confirm_pairs(parts: dict[str, pa.Table], threshold: float) -> pa.Table:
    """cogroup fn (keyed by ``b``): pairs whose estimated Jaccard reaches ``threshold``."""
    e, s = parts["e"], parts["s"]
    if e.num_rows == 0:
        return EDGE.empty_table()
    li, si = join_indices(e.column("b"), s.column("member"))
    if len(li) == 0:
        return EDGE.empty_table()
    sig_a = np.frombuffer(b"".join(e.column("sig_a").take(pa.array(li)).to_pylist()), np.uint32)
    sig_b = np.frombuffer(b"".join(s.column("payload").take(pa.array(si)).to_pylist()), np.uint32)
    n = len(li)
    sim = minhash.estimated_jaccard(sig_a.reshape(n, -1), sig_b.reshape(n, -1))
    ok = sim >= threshold
    a, b = e.column("a").to_numpy()[li][ok], e.column("b").to_numpy()[li][ok]
    return undirected(a, b, sim[ok])


# --- step 5: survivors ------------------------------------------------------------------------------

MEMBER_INFO = pa.schema(
    [
        ("comp", pa.int64()),
        ("member", pa.int64()),
        ("name", pa.string()),
        ("rank", pa.string()),
        ("check", pa.int64()),
        ("doc", pa.int64()),
        ("score", pa.float64()),
    ]
)
ENDS = pa.schema([("member", pa.int64()), ("sim", pa.float64())])


def member_info(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (keyed by member): each member of a component with its name, rank, digest, doc
    and the highest similarity of its own pairs."""
    labels, members, ends = parts["labels"], parts["members"], parts["ends"]
    if labels.num_rows == 0:
        return MEMBER_INFO.empty_table()
    labelled = pc.is_in(members.column("member"), value_set=labels.column("member").combine_chunks())
    members = (
        members.filter(labelled)
        .group_by("member", use_threads=False)
        .aggregate([("name", "min"), ("rank", "min"), ("check", "min"), ("doc", "min")])
    )
    best = ends.group_by("member", use_threads=False).aggregate([("sim", "max")])
    li, mi = join_indices(labels.column("member"), members.column("member"))
    lb, bi = join_indices(labels.column("member").take(pa.array(li)), best.column("member"))
    li, mi = li[lb], mi[lb]
    take = pa.array(mi)
    return pa.table(
        [
            labels.column("comp").take(pa.array(li)),
            labels.column("member").take(pa.array(li)),
            members.column("name_min").take(take),
            members.column("rank_min").take(take),
            members.column("check_min").take(take),
            members.column("doc_min").take(take),
            best.column("sim_max").take(pa.array(bi)),
        ],
        schema=MEMBER_INFO,
    )


def survivors(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (keyed by component): every member but the survivor of its component as a
    :data:`REMOVAL` (exact when its digest equals the survivor's)."""
    t = parts["m"]
    if t.num_rows == 0:
        return REMOVAL.empty_table()
    t = t.take(pc.sort_indices(t, [("comp", "ascending"), ("rank", "ascending")]))
    comp = t.column("comp").to_numpy()
    starts, ends = _runs(comp)
    first = np.repeat(starts, ends - starts)
    removed = np.flatnonzero(np.arange(len(comp)) != first)
    check = t.column("check").to_numpy()
    exact = check[removed] == check[first[removed]]
    doc = t.column("doc").to_numpy()[removed]
    member = t.column("member").to_numpy()[removed]
    names = t.column("name")
    return pa.table(
        [
            np.where(doc != 0, doc, member),
            names.take(pa.array(removed)),
            pa.array(np.where(exact, "exact_duplicate", "near_duplicate")),
            names.take(pa.array(first[removed])),
            t.column("score").take(pa.array(removed)),
        ],
        schema=REMOVAL,
    )


# --- the rounds (written once, run on Ray datasets or in one task over tables) ------------------


def _kinds(table: pa.Table, kinds: tuple[int, ...], columns: list[str]) -> pa.Table:
    mask = pc.is_in(table.column("kind"), value_set=pa.array(kinds, pa.int8()))
    return table.filter(mask).select(columns)


def _ends(edges: pa.Table) -> pa.Table:
    a, b, sim = (edges.column(c).combine_chunks() for c in ("a", "b", "sim"))
    return pa.table([pa.concat_arrays([a, b]), pa.concat_arrays([sim, sim])], schema=ENDS)


def _confirmed(table: pa.Table, flag: bool) -> pa.Table:
    return table.filter(pc.equal(table.column("confirmed"), flag))


def _as_edges(table: pa.Table) -> pa.Table:
    return undirected(
        table.column("a").to_numpy(), table.column("b").to_numpy(), table.column("sim").to_numpy()
    )


BUCKETS = subschema(INDEX, ["kind", "key", "member", "check"])
MEMBERS = subschema(INDEX, ["member", "name", "rank", "check", "doc"])
GONE = pa.schema([("target", pa.int64())])


def components(eng, edges, n_edges: int):
    """Connected components (:data:`LABEL`) of the :data:`EDGE` rows ``edges``: in one task over
    integer arrays when they are few, else rounds of large-star and small-star until the edge set
    stops changing (then every component is a star around its smallest member)."""
    if n_edges <= LOCAL_EDGES or not eng.partitioned:
        return eng.cogroup({"e": edges}, {"e": "a"}, 1, _local_labels, schemas={"e": EDGE})
    p = partitions_for(2 * n_edges, ROWS_PER_PARTITION)
    last = None
    for _ in range(MAX_ROUNDS):
        large = eng.cogroup(
            {"e": eng.map(edges, both_directions)}, {"e": "u"}, p, large_star, schemas={"e": DIRECTED}
        )
        edges = eng.keep(
            eng.cogroup({"e": eng.map(large, by_larger)}, {"e": "u"}, p, small_star, schemas={"e": DIRECTED})
        )
        check = eng.sums(eng.map(edges, edge_checksum))
        if check == last:
            break
        last = check
    return eng.cogroup(
        {"e": eng.map(edges, both_directions)}, {"e": "u"}, p, star_labels, schemas={"e": DIRECTED}
    )


def _local_labels(parts: dict[str, pa.Table]) -> pa.Table:
    return local_components(parts["e"])


def resolve_round(eng, buckets, members, sigs, cfg: DedupConfig, n_rows: int):
    """One round (text or image kinds): bucket rows → edges → components → :data:`REMOVAL` rows
    (None when nothing pairs up)."""
    p = partitions_for(n_rows, ROWS_PER_PARTITION)
    cands = eng.keep(
        eng.cogroup({"b": buckets}, {"b": "key"}, p, bucket_edges, (cfg.hamming_radius,), {"b": BUCKETS})
    )
    edges = [eng.map(eng.map(cands, _confirmed, True), _as_edges)]
    if sigs is not None:
        todo = eng.map(cands, _confirmed, False)
        with_a = eng.cogroup(
            {"e": todo, "s": sigs},
            {"e": "a", "s": "member"},
            p,
            attach_first_signature,
            schemas={"e": CANDIDATE, "s": SIGS},
        )
        edges.append(
            eng.cogroup(
                {"e": with_a, "s": sigs},
                {"e": "b", "s": "member"},
                p,
                confirm_pairs,
                (cfg.threshold,),
                {"e": WITH_SIG, "s": SIGS},
            )
        )
    edges = eng.keep(eng.union(*edges))
    n_edges = eng.count(edges)
    if n_edges == 0:
        return None
    labels = components(eng, edges, n_edges)
    info = eng.cogroup(
        {"labels": labels, "members": members, "ends": eng.map(edges, _ends)},
        {"labels": "member", "members": "member", "ends": "member"},
        p,
        member_info,
        schemas={"labels": LABEL, "members": MEMBERS, "ends": ENDS},
    )
    return eng.keep(eng.cogroup({"m": info}, {"m": "comp"}, p, survivors, schemas={"m": MEMBER_INFO}))


def _alive_after(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (keyed by doc): image rows of the docs not removed in the text round."""
    rows, gone = parts["rows"], parts["gone"]
    if gone.num_rows == 0 or rows.num_rows == 0:
        return rows
    return rows.filter(pc.invert(pc.is_in(rows.column("doc"), value_set=gone.column("target"))))


def _is_item(table: pa.Table, flag: bool) -> pa.Table:
    mask = pc.not_equal(table.column("doc"), 0)
    return table.filter(mask if flag else pc.invert(mask))


def _decontaminated(table: pa.Table) -> pa.Table:
    t = table.filter(pc.equal(table.column("kind"), DECONTAMINATED))
    n = t.num_rows
    target = pc.if_else(pc.not_equal(t.column("doc"), 0), t.column("doc"), t.column("member"))
    evals = t.column("payload").cast(pa.string())
    return pa.table(
        [target, t.column("name"), pa.array(["decontaminated"] * n, pa.string()), evals, t.column("score")],
        schema=REMOVAL,
    )


def _reason_counts(table: pa.Table, prefix: str) -> pa.Table:
    """(prefix/reason, n) counts of a REMOVAL batch."""
    c = (
        pa.table({"key": table.column("reason")})
        .group_by("key", use_threads=False)
        .aggregate([("key", "count")])
    )
    keys = [f"{prefix}/{k}" for k in c.column("key").to_pylist()]
    return pa.table({"key": pa.array(keys, pa.string()), "n": c.column("key_count").cast(pa.int64())})


def _member_kinds(table: pa.Table, prefix: str) -> pa.Table:
    """(prefix/text, n) and (prefix/image, n): members by kind (image: a caption pair or an item)."""
    if "kind" in table.column_names:
        table = table.filter(pc.equal(table.column("kind"), MEMBER))
    image = pc.or_(pc.not_equal(table.column("doc"), 0), pc.starts_with(table.column("name"), "caption:"))
    n_image = int(pc.sum(image.cast(pa.int64())).as_py() or 0)
    n = pa.array([table.num_rows - n_image, n_image], pa.int64())
    return pa.table({"key": [f"{prefix}/text", f"{prefix}/image"], "n": n})


def find_removals(eng, index, cfg: DedupConfig, n_index: int):
    """All removals of an index (decontaminated, then text rounds, then image rounds among the
    images of docs still alive) as :data:`REMOVAL` rows, and the counts for the stats."""
    members = eng.keep(eng.map(index, _kinds, (MEMBER,), MEMBERS.names))
    decontam = eng.map(index, _decontaminated)
    counts = [eng.map(index, _member_kinds, "indexed"), eng.map(decontam, _reason_counts, "decontaminate")]
    removals = [decontam]
    text_buckets = eng.map(index, _kinds, (EXACT_TEXT, MINHASH), BUCKETS.names)
    sigs = eng.map(index, _kinds, (SIGNATURE,), SIGS.names) if cfg.minhash else None
    text = resolve_round(eng, text_buckets, members, sigs, cfg, n_index)
    image_buckets = eng.map(index, _kinds, (EXACT_IMAGE, IMAGE_HASH), [*BUCKETS.names, "doc"])
    image_members = members
    if text is not None:
        removals.append(text)
        counts.append(eng.map(text, _reason_counts, "text"))
        p = partitions_for(n_index, ROWS_PER_PARTITION)
        gone = eng.map(text, lambda t: t.select(["target"]))
        alive = []
        for rows, schema in ((image_buckets, subschema(INDEX, [*BUCKETS.names, "doc"])), (members, MEMBERS)):
            items = eng.cogroup(
                {"rows": eng.map(rows, _is_item, True), "gone": gone},
                {"rows": "doc", "gone": "target"},
                p,
                _alive_after,
                schemas={"rows": schema, "gone": GONE},
            )
            alive.append(eng.union(eng.map(rows, _is_item, False), items))
        image_buckets, image_members = alive
    counts.append(eng.map(image_members, _member_kinds, "alive"))
    image_buckets = eng.map(image_buckets, lambda t: t.select(BUCKETS.names))
    image = resolve_round(eng, image_buckets, image_members, None, cfg, n_index)
    if image is not None:
        removals.append(image)
        counts.append(eng.map(image, _reason_counts, "image"))
    return eng.keep(eng.union(*removals)), eng.sums(eng.union(*counts))


def find_duplicates(
    tables: dict[str, pa.Table], cfg: DedupConfig, eval_index=None, eng: LocalTables | None = None
) -> dict[str, tuple[str, str, float]]:
    """The dedup of in-memory stream tables in this process (the steps the phase runs):
    ``{removed member: (reason, duplicate_of member or eval item, score)}``."""
    index = pa.concat_tables([index_batch(t, s, cfg, eval_index) for s, t in sorted(tables.items())])
    eng = eng or LocalTables()
    removals, _ = find_removals(eng, index, cfg, index.num_rows)
    return removals_dict(removals)


def _resolve_in_one_task(cfg: DedupConfig, *blocks: pa.Table) -> tuple[pa.Table, dict]:
    """Ray task body: :func:`find_removals` over a small index held in this one task."""
    index = pa.concat_tables([b for b in blocks if b.num_rows] or [INDEX.empty_table()]).cast(INDEX)
    return find_removals(LocalTables(), index, cfg, index.num_rows)


# --- the phase ---------------------------------------------------------------------------------------


def _with_member(table: pa.Table, stream: str) -> pa.Table:
    ids = table.column("id").to_pylist()
    return table.append_column("_m", pa.array(hash64([f"{stream}:{i}" for i in ids]), pa.int64()))


def apply_partition(parts: dict[str, pa.Table], stream: str) -> pa.Table:
    """cogroup fn (keyed by record): the records of one partition with their removals applied."""
    records = parts["records"].drop_columns(["_m"])
    return apply_removals(records, stream, removals_dict(parts["removals"]))


LOCAL_INDEX_ROWS = 2 * ROWS_PER_TASK
"""Up to this many index rows, every step after the index runs in one Ray task."""


class DedupPhase(Phase):
    """Exact and near-duplicate texts and images across all streams (see the module docstring)."""

    name = "dedup"

    def __init__(self, cfg: DedupConfig) -> None:
        self.cfg = cfg

    def fingerprint(self) -> Any:
        return to_dict(self.cfg)

    def declare(self, data: Data) -> tuple[Output, ...]:
        return tuple(stream_output(s) for s in STREAMS if s in data)

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        import ray
        import ray.data

        from mm1data.dedup.decontaminate import build_index

        cfg, t0 = self.cfg, time.perf_counter()
        streams = {s: data.kept(s) for s in STREAMS if s in data}
        eval_index = build_index(cfg) if (cfg.decontaminate_texts or cfg.decontaminate_images) else None
        parts = [
            map_in_slices(ds, index_batch, (s, cfg, eval_index), INDEX_BATCH_ROWS)
            for s, ds in streams.items()
        ]
        eng = RayDatasets()
        index = eng.keep(eng.union(*parts))
        n_index = eng.count(index)
        steps = {"index": time.perf_counter() - t0}
        t = time.perf_counter()
        if n_index <= LOCAL_INDEX_ROWS:
            ref = ray.remote(_resolve_in_one_task).options(num_returns=2).remote(cfg, *index.to_arrow_refs())
            removals, counts = ray.data.from_arrow_refs([ref[0]]), ray.get(ref[1])
        else:
            removals, counts = find_removals(eng, index, cfg, n_index)
        steps["resolve"] = time.perf_counter() - t
        ctx.info["dedup"] = {"phases": self._phase_stats(counts), "steps": steps}
        out = {}
        for s, ds in streams.items():
            out[s] = cogroup(
                {
                    "records": ds.map_batches(_with_member, fn_args=(s,), batch_format="pyarrow"),
                    "removals": removals,
                },
                {"records": "_m", "removals": "target"},
                partitions_for(data.rows(s), ROWS_PER_PARTITION, data.nbytes(s)),
                apply_partition,
                (s,),
                {"records": STREAM_SCHEMAS[s].append(pa.field("_m", pa.int64())), "removals": REMOVAL},
                stream="records",
            )
        return out

    def _phase_stats(self, counts: dict[str, int]) -> list[dict]:
        """Per dedup kind: members in, kept, dropped per reason (text kinds, then image kinds)."""
        c = counts.get
        text_in, image_in = c("indexed/text", 0), c("alive/image", 0)
        exact_t, near_t = c("text/exact_duplicate", 0), c("text/near_duplicate", 0)
        exact_i, near_i = c("image/exact_duplicate", 0), c("image/near_duplicate", 0)
        decon = c("decontaminate/decontaminated", 0)
        out = []
        if self.cfg.decontaminate_texts or self.cfg.decontaminate_images:
            total = text_in + c("indexed/image", 0) + decon
            out.append(
                {
                    "phase": "decontaminate",
                    "unit": "records+images",
                    "in": total,
                    "kept": total - decon,
                    "dropped": {"decontaminated": decon} if decon else {},
                }
            )
        rows = [
            ("exact_text", "records", self.cfg.exact_text, text_in, exact_t, "exact_duplicate"),
            ("minhash_text", "records", self.cfg.minhash, text_in - exact_t, near_t, "near_duplicate"),
            ("exact_image", "images", self.cfg.exact_image, image_in, exact_i, "exact_duplicate"),
            ("image_hash", "images", self.cfg.image_hash, image_in - exact_i, near_i, "near_duplicate"),
        ]
        for phase, unit, on, n_in, n_drop, reason in rows:
            if on:
                out.append(
                    {
                        "phase": phase,
                        "unit": unit,
                        "in": n_in,
                        "kept": n_in - n_drop,
                        "dropped": {reason: n_drop} if n_drop else {},
                    }
                )
        return out
