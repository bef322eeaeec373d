"""The plan phase: select, mix, cut into shards and pack every plan partition on its own.

Every example goes to plan partition ``hash(key) mod P``. ``P`` is ``build.plan_partitions`` or a
default that depends only on the number of examples (about :data:`EXAMPLES_PER_PARTITION` each),
never on the workers; it is recorded in the manifest. Each partition is one co-partitioned task
over example metadata (no tokens, no images): it applies the mix rule to its own examples (the
scarcest stream used whole and the others cut to the target ratio, or with ``upsample`` the
largest used whole and the others repeated), interleaves them so every prefix stays on target,
cuts the order into shards and packs each (:func:`mm1data.pack.plan.plan_build`, seeded by seed
and partition). It emits one :data:`PLACEMENT` row per (example, shard, sequence, slot) and one
rejected row (``mix_surplus``, or ``not_in_mix`` for a stream the mix leaves out) per example left
over; the payload reaches its shard later by a join. The driver sees only per-stream sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.config import BuildConfig, to_dict
from mm1data.errors import UsageError
from mm1data.pack.mix import mix_group, parse_mix
from mm1data.pack.packer import min_sequences
from mm1data.pack.plan import plan_build
from mm1data.runners.executor import Context, Data, Output, Phase, sum_counts
from mm1data.runners.shuffle import cogroup, partition_of, partitions_for
from mm1data.schemas import LINEAGE, REJECT_INFO
from mm1data.tokens.render import METADATA_COLUMNS

EXAMPLES_PER_PARTITION = 100_000

PLACEMENT = pa.schema(
    [
        ("key_hash", pa.int64()),
        ("key", pa.string()),
        ("stream", pa.string()),
        ("id", pa.string()),
        ("part", pa.int32()),  # piece of a split record (as in EXAMPLE)
        ("lineage", LINEAGE),
        ("n_tokens", pa.int32()),
        ("n_images", pa.int32()),
        ("image_bytes", pa.int64()),
        ("shard_part", pa.int32()),  # plan partition
        ("shard_index", pa.int32()),  # shard within the partition
        ("seq", pa.int32()),
        ("slot", pa.int32()),
        ("copy", pa.int32()),  # which use of the example (epochs > 1 repeat it)
        ("shard_full", pa.bool_()),  # False: the partition's last shard, short of shard_size
        ("reject", REJECT_INFO),  # set: the mix left this example out
    ]
)


def plan_partition(parts: dict[str, pa.Table], cfg: BuildConfig, n_parts: int) -> pa.Table:
    """cogroup fn: the placements (and leftovers) of one plan partition's examples."""
    meta = parts["m"]
    if meta.num_rows == 0:
        return PLACEMENT.empty_table()
    meta = meta.take(pc.sort_indices(meta, [("key", "ascending")]))
    p = int(partition_of(meta.column("key_hash").to_numpy()[:1], n_parts)[0])
    streams = np.array(meta.column("stream").to_pylist(), dtype=object)
    tokens = meta.column("n_tokens").to_numpy()
    images = meta.column("n_images").to_numpy()
    target = parse_mix(cfg.mix)
    groups = {mix_group(s, target) for s in streams.tolist()}
    rows: dict[str, list] = {c: [] for c in ("i", "shard", "seq", "slot", "copy", "full")}
    copies = np.zeros(len(tokens), np.int64)
    if all(g in groups for g in target):  # a partition that lacks a stream of the mix places nothing
        plan = plan_build(streams, tokens, images, cfg, meta.column("image_bytes").to_numpy(), partition=p)
        for s, shard in enumerate(plan.shards):
            full = s < len(plan.shards) - 1 or len(shard) == cfg.shard_size
            for q, seq in enumerate(shard):
                for j, i in enumerate(seq):
                    for c, v in zip(rows, (i, s, q, j, copies[i], full), strict=True):
                        rows[c].append(v)
                    copies[i] += 1
    idx = np.asarray(rows["i"], np.int64)
    placed = _rows(meta, idx, rows, p, None)
    left = np.flatnonzero(copies == 0)
    why = [
        {"stage": "mix", "reason": "mix_surplus" if mix_group(streams[i], target) in target else "not_in_mix"}
        for i in left.tolist()
    ]
    unused = _rows(meta, left, None, p, why)
    return pa.concat_tables([placed, unused])


def _rows(meta: pa.Table, idx: np.ndarray, where: dict | None, p: int, reject: list | None) -> pa.Table:
    t = meta.take(pa.array(idx, pa.int64()))
    n = len(idx)

    def col(name: str, dtype) -> pa.Array:
        return pa.array(np.asarray(where[name], dtype) if where else np.full(n, -1, dtype))

    return pa.table(
        [
            t.column("key_hash"),
            t.column("key"),
            t.column("stream"),
            t.column("id"),
            t.column("part"),
            t.column("lineage"),
            t.column("n_tokens"),
            t.column("n_images"),
            t.column("image_bytes"),
            pa.array(np.full(n, p, np.int32)),
            col("shard", np.int32),
            col("seq", np.int32),
            col("slot", np.int32),
            col("copy", np.int32),
            pa.array(np.asarray(where["full"], bool) if where else np.zeros(n, bool)),
            pa.array(reject if reject is not None else [None] * n, REJECT_INFO),
        ],
        schema=PLACEMENT,
    )


def plan_sums(table: pa.Table, target: dict[str, float], unit: str) -> pa.Table:
    """Per-stream sums of a PLACEMENT batch for the stats, epochs, the fill bound and sizing the
    write: ``rendered|used|placed/<stream>`` (examples), ``avail|usedw/<stream>`` (mix unit),
    ``tokens|images/<mix group>`` and ``bytes/<stream>`` placed, and ``shards/all``."""
    stream = np.array(table.column("stream").to_pylist(), dtype=object)
    placed = pc.is_null(table.column("reject")).to_numpy(zero_copy_only=False)
    first = placed & (table.column("copy").to_numpy() == 0)
    tokens = table.column("n_tokens").to_numpy().astype(np.int64)
    images = table.column("n_images").to_numpy().astype(np.int64)
    weight = tokens if unit == "tokens" else np.ones(len(tokens), np.int64)
    sums: dict[str, int] = {}

    def add(key: str, mask: np.ndarray, values: np.ndarray | None = None) -> None:
        for s in np.unique(stream[mask]).tolist():
            m = mask & (stream == s)
            k = key.format(s=s, g=mix_group(s, target))
            sums[k] = sums.get(k, 0) + int(values[m].sum() if values is not None else m.sum())

    add("rendered/{s}", first | ~placed)
    add("used/{s}", first)
    add("placed/{s}", placed)
    add("avail/{s}", first | ~placed, weight)
    add("usedw/{s}", placed, weight)
    add("tokens/{g}", placed, tokens)
    add("images/{g}", placed, images)
    add("gexamples/{g}", placed)
    add("gsequences/{g}", placed & (table.column("slot").to_numpy() == 0))
    add("bytes/{s}", placed, table.column("image_bytes").to_numpy().astype(np.int64))
    firsts = placed & (table.column("seq").to_numpy() == 0) & (table.column("slot").to_numpy() == 0)
    sums["shards/all"] = int(firsts.sum())
    return pa.table({"key": list(sums), "n": pa.array(list(sums.values()), pa.int64())})


def _stream_counts(table: pa.Table) -> pa.Table:
    c = (
        pa.table({"key": table.column("stream")})
        .group_by("key", use_threads=False)
        .aggregate([("key", "count")])
    )
    return pa.table({"key": c.column("key"), "n": c.column("key_count").cast(pa.int64())})


class PlanPhase(Phase):
    """Placements of every example in (partition, shard, sequence, slot), per plan partition."""

    name = "plan"
    outputs = (Output("placements", "mix", PLACEMENT),)

    def __init__(self, cfg: BuildConfig) -> None:
        self.cfg = cfg

    def fingerprint(self) -> Any:
        return to_dict(self.cfg)

    def partitions(self, n_examples: int) -> int:
        """The plan partition count: from the recipe, else from the number of examples."""
        return self.cfg.plan_partitions or partitions_for(n_examples, EXAMPLES_PER_PARTITION)

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        cfg = self.cfg
        target = parse_mix(cfg.mix)
        n = data.rows("examples")
        if n == 0:
            raise UsageError("nothing left to build: every record was rejected")
        meta = data.kept("examples", METADATA_COLUMNS).materialize()
        per_stream = sum_counts(meta.map_batches(_stream_counts, batch_format="pyarrow"))
        have = {mix_group(s, target) for s, k in per_stream.items() if k}
        for g in target:
            if g not in have:
                raise UsageError(
                    f"the mix asks for {g!r} but no {g} examples are left after filtering "
                    "(give that source, or leave the stream out of --mix)"
                )
        n_parts = self.partitions(n)
        schema = meta.schema().base_schema if hasattr(meta.schema(), "base_schema") else meta.schema()
        placements = cogroup(
            {"m": meta}, {"m": "key_hash"}, n_parts, plan_partition, (cfg, n_parts), {"m": schema}
        )
        placements = placements.materialize()
        sums = sum_counts(
            placements.map_batches(plan_sums, fn_args=(target, cfg.mix_unit), batch_format="pyarrow")
        )
        ctx.info["plan"] = {"partitions": n_parts, "sums": sums}
        return {"placements": placements}


def plan_summary(sums: dict[str, int], cfg: BuildConfig) -> dict:
    """Examples per stream (rendered, used, placed), epochs and the attainable fill from the plan's sums."""
    target = parse_mix(cfg.mix)

    def of(prefix: str) -> dict[str, int]:
        return {k.split("/", 1)[1]: v for k, v in sums.items() if k.startswith(prefix + "/")}

    avail, used = of("avail"), of("usedw")
    epochs = {s: round(used.get(s, 0) / a, 6) if a else 0.0 for s, a in sorted(avail.items())}
    tokens, images = of("tokens"), of("images")
    if cfg.pack_mode == "per-stream" or cfg.mix_unit == "sequences":
        need = sum(
            min_sequences(tokens.get(g, 0), images.get(g, 0), cfg.seq_len, cfg.max_images) for g in target
        )
    else:
        need = min_sequences(sum(tokens.values()), sum(images.values()), cfg.seq_len, cfg.max_images)
    bound = sum(tokens.values()) / (need * cfg.seq_len) if need else 0.0
    unit = {"tokens": tokens, "examples": of("gexamples"), "sequences": of("gsequences")}[cfg.mix_unit]
    total = sum(unit.values())
    realized = {g: unit.get(g, 0) / total if total else 0.0 for g in target}
    return {
        "realized": realized,
        "rendered": dict(sorted(of("rendered").items())),
        "used": dict(sorted(of("used").items())),
        "placed_with_repeats": dict(sorted(of("placed").items())),
        "epochs": epochs,
        "attainable_fill": bound,
    }
