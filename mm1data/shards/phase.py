"""The write phase: placements meet their payload by a join, shards are written by workers, and
the manifest is streamed (never held whole by the driver) and published last.

1. **route** (keyed by example): each placement of the plan meets its example's tokens and
   images; the routed row carries its shard;
2. **write** (keyed by shard; about one partition per
   :data:`~mm1data.runners.shuffle.BYTES_PER_TASK` of placed tokens and images, never more than
   there are shards): each task writes its shards one at a time as deterministic tars
   (:mod:`mm1data.shards.writer`), each whole or not at all, then its marker in
   ``_work/shards/``; a shard whose marker holds the same plan fingerprint is kept as written by
   an earlier run;
3. **manifest**: the shard rows, sorted by (partition, shard), stream into
   ``_work/manifest.json`` with running totals; :meth:`WritePhase.finish` publishes it as
   ``manifest.json`` after everything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data import __version__
from mm1data.config import BuildConfig, to_dict
from mm1data.io.fs import fsspec_fs
from mm1data.pack.mix import mix_group, parse_mix
from mm1data.pack.phase import PLACEMENT, plan_summary
from mm1data.runners.executor import Context, Data, Output, Phase, sum_counts
from mm1data.runners.ray_session import remote_task
from mm1data.runners.shuffle import cogroup, join_indices, mix64, partitions_for
from mm1data.runners.workdir import WorkDir
from mm1data.schemas import subschema
from mm1data.shards.format import (
    Header,
    Mix,
    Tokenizer,
    Totals,
    TotalsBuilder,
    parse_shard_name,
    shard_name,
    tar_index_name,
)
from mm1data.shards.writer import (
    SHARD_STATS,
    finish_dataset,
    shard_counts,
    shard_entry,
    shard_samples,
    write_shard,
)
from mm1data.tokens.render import EXAMPLE
from mm1data.tokens.tokenizer import TextTokenizer

TOKEN_BYTES = 5
"""Payload bytes of an example per token: its int32 token id and its uint8 loss-mask value."""

PAYLOAD = [
    "key_hash",
    "stream",
    "id",
    "part",
    "lineage",
    "tokens",
    "loss_mask",
    "image_starts",
    "images",
    "n_tokens",
    "n_images",
]
WHERE = ["key_hash", "shard_part", "shard_index", "seq", "slot", "shard_full"]
ROUTED = subschema(EXAMPLE, PAYLOAD[1:]).append(pa.field("shard_part", pa.int32()))
for _name, _type in (
    ("shard_index", pa.int32()),
    ("seq", pa.int32()),
    ("slot", pa.int32()),
    ("shard_full", pa.bool_()),
    ("_s", pa.int64()),
):
    ROUTED = ROUTED.append(pa.field(_name, _type))


def route(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (keyed by example): each placement with its example's payload and shard key."""
    ex, pl = parts["ex"], parts["pl"]
    pi, ei = join_indices(pl.column("key_hash"), ex.column("key_hash"))
    if len(pi) == 0:
        return ROUTED.empty_table()
    out = ex.take(pa.array(ei)).drop_columns(["key_hash"])
    where = pl.take(pa.array(pi))
    for c in WHERE[1:]:
        out = out.append_column(c, where.column(c))
    part = where.column("shard_part").to_numpy().astype(np.int64)
    index = where.column("shard_index").to_numpy().astype(np.int64)
    return out.append_column("_s", pa.array(mix64((part << 32) | index))).cast(ROUTED)


def mix_weights(rows: list[dict], target: dict[str, float], unit: str) -> dict[str, float]:
    """Weight of each mix group in one shard's rows, in the mix unit (sequences: a sequence
    counts for the group of its first example)."""
    w: dict[str, float] = {}
    if unit == "sequences":
        firsts = {}
        for r in rows:
            if r["seq"] not in firsts or r["slot"] < firsts[r["seq"]]["slot"]:
                firsts[r["seq"]] = r
        for r in firsts.values():
            g = mix_group(r["stream"], target)
            w[g] = w.get(g, 0.0) + 1.0
        return w
    for r in rows:
        g = mix_group(r["stream"], target)
        w[g] = w.get(g, 0.0) + (r["n_tokens"] if unit == "tokens" else 1.0)
    return w


TAKE_ROWS = 256
"""Rows of a shard's payload taken (copied in sorted order) at a time, in whole sequences: a
write task holds its partition's rows and one such chunk, not a sorted copy of a whole shard."""


def _sequence_chunks(t: pa.Table, rows: pa.Array, seqs: np.ndarray) -> Iterator[pa.Table]:
    """The rows ``rows`` of ``t`` (whose sequence numbers are ``seqs``), about :data:`TAKE_ROWS` at
    a time, cut between sequences."""
    starts = np.flatnonzero(np.r_[True, seqs[1:] != seqs[:-1]])
    cuts = [0]
    for start in starts[1:].tolist():
        if start - cuts[-1] >= TAKE_ROWS:
            cuts.append(start)
    batches = t.to_batches()
    offsets = np.cumsum([0] + [len(b) for b in batches], dtype=np.int64)
    order = rows.to_numpy().astype(np.int64)
    for a, b in zip(cuts, [*cuts[1:], len(seqs)], strict=True):
        yield _take(batches, offsets, order[a:b])


def _take(batches: list[pa.RecordBatch], offsets: np.ndarray, rows: np.ndarray) -> pa.Table:
    """Rows ``rows`` (indices over the concatenated ``batches``, which start at ``offsets``) in
    that order. Each batch is taken from on its own: ``Table.take`` on a chunked list column
    concatenates the whole column first, for every call."""
    source = np.searchsorted(offsets, rows, side="right") - 1
    pieces, positions = [], []
    for s in np.unique(source).tolist():
        at = np.flatnonzero(source == s)
        pieces.append(batches[s].take(pa.array(rows[at] - offsets[s])))
        positions.append(at)
    taken = pa.Table.from_batches(pieces).combine_chunks()
    return taken.take(pa.array(np.argsort(np.concatenate(positions), kind="stable")))


def write_shards(
    parts: dict[str, pa.Table], root: str, cfg: BuildConfig, pad_id: int, plan_fp: str
) -> pa.Table:
    """cogroup fn (keyed by shard): write every shard of this partition; one SHARD_STATS row each."""
    t = parts["r"]
    if t.num_rows == 0:
        return SHARD_STATS.empty_table()
    order = pc.sort_indices(t, [(k, "ascending") for k in ("shard_part", "shard_index", "seq", "slot")])
    part = pc.take(t.column("shard_part"), order).to_numpy()
    index = pc.take(t.column("shard_index"), order).to_numpy()
    starts = np.flatnonzero(np.r_[True, (part[1:] != part[:-1]) | (index[1:] != index[:-1])])
    ends = np.r_[starts[1:], len(part)]
    slot_len = cfg.image_tokens
    target = parse_mix(cfg.mix)
    work, (fs, path) = WorkDir(root), fsspec_fs(root)
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        p, i = int(part[s]), int(index[s])
        name = shard_name(p, i)
        marker = work.shard_marker(name)
        if marker and marker.get("fingerprint") == plan_fp and fs.exists(f"{path}/{tar_index_name(name)}"):
            if fs.exists(f"{path}/{name}") and fs.size(f"{path}/{name}") == marker["bytes"]:
                out.append({**{k: v for k, v in marker.items() if k != "fingerprint"}, "resumed": True})
                continue
        rows = order.slice(s, e - s)  # this shard's rows, sorted by (seq, slot)
        light = t.select(["seq", "slot", "stream", "n_tokens", "n_images", "shard_full"]).take(rows)
        samples = (
            sample
            for chunk in _sequence_chunks(t, rows, light.column("seq").to_numpy())
            for sample in shard_samples(chunk, p, i, cfg.seq_len, pad_id, slot_len)
        )
        size, sha256 = write_shard(root, name, samples)
        counts = shard_counts(light)
        row = {
            "shard_part": p,
            "shard_index": i,
            "path": name,
            "bytes": size,
            "sha256": sha256,
            "sequences": counts["sequences"],
            "images": counts["images"],
            "tokens": json.dumps(dict(sorted(counts["tokens"].items()))),
            "examples": json.dumps(dict(sorted(counts["examples"].items()))),
            "mix": json.dumps(dict(sorted(mix_weights(light.to_pylist(), target, cfg.mix_unit).items()))),
            "full": bool(light.column("shard_full")[0].as_py()),
        }
        work.commit_shard(name, row, plan_fp)
        out.append({**row, "resumed": False})
    return pa.Table.from_pylist(out, schema=SHARD_STATS)


LOCAL_SORT_ROWS = 10_000
"""Up to this many shard rows, the manifest's order comes from one sort in one task; past it, each
of ``rows / LOCAL_SORT_ROWS`` range partitions is sorted in its own task."""


ROWS_AT_ONCE = 512
"""Shard rows a manifest task holds as Python dicts at a time."""


def sorted_tables(ds, rows: int, parts: int) -> list:
    """Object refs of the shard rows of ``ds`` (``rows`` of them, as counted; ``shard_part`` in
    ``[0, parts)``), one sorted table per ref, the refs in (``shard_part``, ``shard_index``) order.
    Many rows are cut into contiguous ranges of plan partitions by a cogroup, each range sorted in
    its own task. The driver holds refs (one per range), never rows."""
    if rows <= LOCAL_SORT_ROWS:
        return [remote_task(_sorted_concat).remote(*ds.to_arrow_refs())]
    ranges = min(max(1, parts), partitions_for(rows, LOCAL_SORT_ROWS))
    keyed = ds.map_batches(_with_range, fn_args=(ranges, parts), batch_format="pyarrow")
    return cogroup({"s": keyed}, {"s": "_range"}, ranges, _sorted_range).to_arrow_refs()


def sorted_rows(refs: list) -> Iterator[dict]:
    """The rows of :func:`sorted_tables`' refs in order, one table and :data:`ROWS_AT_ONCE` rows as
    Python dicts at a time (in the task that writes the manifest)."""
    import ray

    for ref in refs:
        for batch in ray.get(ref).to_batches(ROWS_AT_ONCE):
            yield from batch.to_pylist()


def manifest_totals(refs: list, header: Header, attainable_fill: float | None) -> Totals:
    """The manifest's totals over the sorted shard rows of ``refs`` (each entry checked on the way),
    counted in one task."""
    import ray

    return ray.get(remote_task(_totals).remote(refs, header, attainable_fill))


def publish_manifest(root: str, header: Header, refs: list, attainable_fill: float | None) -> None:
    """The ``.nv-meta`` files Energon reads, then ``manifest.json`` (see
    :func:`~mm1data.shards.writer.finish_dataset`), written from the sorted shard rows of ``refs``
    by one task."""
    import ray

    ray.get(remote_task(_publish).remote(root, header, refs, attainable_fill))


def _totals(refs: list, header: Header, attainable_fill: float | None) -> Totals:
    totals = TotalsBuilder(header.seq_len)
    for i, e in enumerate(entries(sorted_rows(refs), header.mix.target)):
        totals.add(e, f"shards[{i}]")
    return totals.totals(attainable_fill)


def _publish(root: str, header: Header, refs: list, attainable_fill: float | None) -> None:
    finish_dataset(root, header, entries(sorted_rows(refs), header.mix.target), attainable_fill)


def _sorted_concat(*tables: pa.Table) -> pa.Table:
    tables = tuple(t for t in tables if t.num_rows)
    return _sorted(pa.concat_tables(tables)) if tables else SHARD_STATS.empty_table()


def _sorted(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [(k, "ascending") for k in ORDER]))


def _with_range(table: pa.Table, ranges: int, parts: int) -> pa.Table:
    """``table`` with ``_range``: the contiguous range of plan partitions its ``shard_part`` is in."""
    part = table.column("shard_part").to_numpy().astype(np.int64)
    return table.append_column("_range", pa.array(np.minimum(part * ranges // max(1, parts), ranges - 1)))


def _sorted_range(parts: dict[str, pa.Table]) -> pa.Table:
    return _sorted(parts["s"].drop_columns(["_range"]))


def manifest_header(cfg: BuildConfig, tok: TextTokenizer, summary: dict, partitions: int) -> Header:
    """The ``manifest.json`` header of a build (see ``schemas/packed-v1.md``), from the plan's sums."""
    return Header(
        seq_len=cfg.seq_len,
        image_tokens=cfg.image_tokens,
        image_markers=cfg.image_markers,
        max_images=cfg.max_images,
        image_size=cfg.image_size,
        jpeg_quality=cfg.jpeg_quality,
        tokenizer=Tokenizer(**tok.manifest()),
        special_tokens=tok.ids,
        mix=Mix(
            target={k: round(v, 6) for k, v in parse_mix(cfg.mix).items()},
            unit=cfg.mix_unit,
            realized={k: round(v, 6) for k, v in summary["realized"].items()},
        ),
        epochs=summary["epochs"],
        partitions=partitions,
        build=to_dict(cfg),
        mm1data_version=__version__,
    )


def entries(rows: Iterator[dict], target: dict[str, float]):
    """Manifest shard entries of SHARD_STATS rows (in order): each shard's realized mix from its
    weights per mix group."""
    for r in rows:
        w = json.loads(r["mix"])
        total = sum(w.values())
        mix = {g: (w.get(g, 0.0) / total if total else 0.0) for g in target}
        yield shard_entry(r, mix, bool(r["full"]))


class WritePhase(Phase):
    """Shards from the plan's placements and the examples' payload, then the manifest (last)."""

    name = "write"
    outputs = (Output("shards", None, SHARD_STATS),)

    def __init__(self, cfg: BuildConfig, tok: TextTokenizer) -> None:
        self.cfg, self.tok = cfg, tok

    def fingerprint(self) -> Any:
        return [to_dict(self.cfg), self.tok.manifest()]

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        cfg = self.cfg
        plan_fp = ctx.fingerprints["plan"]
        info = ctx.info.get("plan", {})
        sums = info.get("sums", {})
        n_shards = max(1, sum(v for k, v in sums.items() if k.startswith("shards/")))
        # what the placed examples weigh (images, tokens and loss masks, repeats included)
        placed_bytes = sum(v for k, v in sums.items() if k.startswith("bytes/"))
        placed_bytes += TOKEN_BYTES * sum(v for k, v in sums.items() if k.startswith("tokens/"))
        payload = data.kept("examples", PAYLOAD)
        where = data.kept("placements", WHERE)
        n_rows = data.rows("examples") + data.rows("placements")
        routed = cogroup(
            {"ex": payload, "pl": where},
            {"ex": "key_hash", "pl": "key_hash"},
            partitions_for(n_rows, nbytes=data.nbytes("examples") + placed_bytes),
            route,
            schemas={"ex": subschema(EXAMPLE, PAYLOAD), "pl": subschema(PLACEMENT, WHERE)},
            stream="ex",
        )
        tasks = min(n_shards, partitions_for(0, nbytes=placed_bytes))
        shards = cogroup(
            {"r": routed},
            {"r": "_s"},
            tasks,
            write_shards,
            (ctx.root, cfg, self.tok.ids["pad"], plan_fp),
            {"r": ROUTED},
        ).materialize()
        resumed = sum_counts(shards.map_batches(_resumed_counts, batch_format="pyarrow"))
        summary = plan_summary(sums, cfg)
        n_parts = info.get("partitions", 1)
        header = manifest_header(cfg, self.tok, summary, n_parts)
        ordered = sorted_tables(shards, resumed.get("shards", 0), n_parts)
        totals = manifest_totals(ordered, header, summary["attainable_fill"])
        _drop_stale_shards(ctx.root, shards)
        ctx.info["write"] = {
            "header": header.to_json(),
            "totals": totals.to_json(),
            "examples": {k: summary[k] for k in ("rendered", "used", "placed_with_repeats")},
            "kept_from_earlier_run": resumed.get("resumed", 0),
        }
        return {"shards": shards}

    def finish(self, ctx: Context, data: Data) -> None:
        """The ``.nv-meta`` files Energon reads, then ``manifest.json``: the last file of a build."""
        info = ctx.info["write"]
        header = Header.from_json(info["header"])
        # (from the phase's output: on a resumed build, run() did not run in this session)
        ordered = sorted_tables(data.kept("shards"), info["totals"]["shards"], header.partitions)
        publish_manifest(ctx.root, header, ordered, info["totals"]["attainable_fill"])


ORDER = ["shard_part", "shard_index"]


def _resumed_counts(table: pa.Table) -> pa.Table:
    n = int(pc.sum(table.column("resumed").cast(pa.int64())).as_py() or 0)
    return pa.table({"key": ["resumed", "shards"], "n": pa.array([n, table.num_rows], pa.int64())})


def _partition_counts(table: pa.Table) -> pa.Table:
    parts = table.column("shard_part").to_numpy()
    keys, n = np.unique(parts, return_counts=True)
    return pa.table({"key": [str(int(k)) for k in keys], "n": pa.array(n, pa.int64())})


def _drop_stale_shards(root: str, shards) -> None:
    """Remove shard tars and indexes (and leftovers of killed writes) that are not in this plan,
    partition by partition, so the driver lists one partition's shards at a time."""
    per_part = {
        int(k): v
        for k, v in sum_counts(shards.map_batches(_partition_counts, batch_format="pyarrow")).items()
    }
    fs, path = fsspec_fs(root)
    listed = {int(p.rsplit("/", 1)[-1].split("-")[1]) for p in fs.glob(f"{path}/shard-?????-00000.tar*")}
    for part in sorted(listed | set(per_part)):
        for p in fs.glob(f"{path}/shard-{part:05d}-*.tar*"):
            name = p.rsplit("/", 1)[-1]
            tar = name.removesuffix(".idx")
            where = parse_shard_name(tar)
            if where is None or where[1] >= per_part.get(part, 0) or name.endswith(".partial"):
                fs.rm(p)
