"""The write phase: placements meet their payload by a join, shards are written by workers, and
the manifest is streamed (never held whole by the driver) and published last.

1. **route** (keyed by example): each placement of the plan meets its example's tokens and
   images; the routed row carries its shard;
2. **write** (keyed by shard; about one partition per :data:`BYTES_PER_TASK` of images, never
   more than there are shards): each task writes its shards one at a time as deterministic tars
   (:mod:`mm1data.shards.writer`), each whole or not at all, then its marker in
   ``_work/shards/``; a shard whose marker holds the same plan fingerprint is kept as written by
   an earlier run;
3. **manifest**: the shard rows, sorted by (partition, shard), stream into
   ``_work/manifest.json`` with running totals; :meth:`WritePhase.finish` publishes it as
   ``manifest.json`` after everything else.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data import __version__
from mm1data.config import BuildConfig, to_dict
from mm1data.io.fs import fsspec_fs, is_s3
from mm1data.pack.mix import mix_group, parse_mix
from mm1data.pack.phase import PLACEMENT, plan_summary
from mm1data.runners.executor import Context, Data, Output, Phase, sum_counts
from mm1data.runners.shuffle import cogroup, join_indices, mix64, partitions_for
from mm1data.runners.workdir import WorkDir
from mm1data.schemas import subschema
from mm1data.shards.writer import FORMAT, SHARD_STATS, VERSION, shard_name, shard_tar
from mm1data.tokens.render import EXAMPLE
from mm1data.tokens.tokenizer import TextTokenizer

BYTES_PER_TASK = 512 * 1024**2
PAYLOAD = ["key_hash", "stream", "id", "part", "lineage", "tokens", "loss_mask", "image_starts", "images",
           "n_tokens", "n_images"]  # fmt: skip
WHERE = ["key_hash", "shard_part", "shard_index", "seq", "slot", "shard_full"]
ROUTED = subschema(EXAMPLE, PAYLOAD[1:]).append(pa.field("shard_part", pa.int32()))
for _name, _type in (("shard_index", pa.int32()), ("seq", pa.int32()), ("slot", pa.int32()),
                     ("shard_full", pa.bool_()), ("_s", pa.int64())):  # fmt: skip
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


def write_shards(
    parts: dict[str, pa.Table], root: str, cfg: BuildConfig, pad_id: int, plan_fp: str
) -> pa.Table:
    """cogroup fn (keyed by shard): write every shard of this partition; one SHARD_STATS row each."""
    t = parts["r"]
    if t.num_rows == 0:
        return SHARD_STATS.empty_table()
    t = t.take(pc.sort_indices(t, [("shard_part", "ascending"), ("shard_index", "ascending")]))
    part, index = t.column("shard_part").to_numpy(), t.column("shard_index").to_numpy()
    starts = np.flatnonzero(np.r_[True, (part[1:] != part[:-1]) | (index[1:] != index[:-1])])
    ends = np.r_[starts[1:], len(part)]
    slot_len = cfg.image_tokens
    target = parse_mix(cfg.mix)
    work, (fs, path) = WorkDir(root), fsspec_fs(root)
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        p, i = int(part[s]), int(index[s])
        name = shard_name(p, i)
        rows = t.slice(s, e - s).to_pylist()
        marker = work.shard_marker(name)
        if marker and marker.get("fingerprint") == plan_fp and fs.exists(f"{path}/{name}"):
            if fs.size(f"{path}/{name}") == marker["bytes"]:
                out.append({**{k: v for k, v in marker.items() if k != "fingerprint"}, "resumed": True})
                continue
        data, counts = shard_tar(rows, p, i, cfg.seq_len, pad_id, slot_len)
        _put(fs, f"{path}/{name}", data, is_s3(root))
        row = {
            "shard_part": p,
            "shard_index": i,
            "path": name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "sequences": counts["sequences"],
            "images": counts["images"],
            "tokens": json.dumps(dict(sorted(counts["tokens"].items()))),
            "examples": json.dumps(dict(sorted(counts["examples"].items()))),
            "mix": json.dumps(dict(sorted(mix_weights(rows, target, cfg.mix_unit).items()))),
            "full": bool(rows[0]["shard_full"]),
        }
        work.commit_shard(name, row, plan_fp)
        out.append({**row, "resumed": False})
    return pa.Table.from_pylist(out, schema=SHARD_STATS)


def _put(fs, path: str, data: bytes, s3: bool) -> None:
    """Write ``data`` whole or not at all: one PUT on S3, else beside and renamed."""
    if s3:
        fs.pipe_file(path, data)
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(f"{path}.partial", data)
    fs.mv(f"{path}.partial", path)


LOCAL_SORT_ROWS = 10_000
"""Up to this many shard rows, the manifest's order comes from one sort in the driver."""


def sorted_rows(ds, keys: list[str], rows: int) -> Iterator[dict]:
    """The rows of a dataset of small rows in ``keys`` order, streamed: Ray's distributed sort, or
    one local sort when there are few (``rows``, as counted)."""
    import ray

    if rows <= LOCAL_SORT_ROWS:
        tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
        if tables:
            table = pa.concat_tables(tables)
            yield from table.take(pc.sort_indices(table, [(k, "ascending") for k in keys])).to_pylist()
        return
    for batch in ds.sort(keys).iter_batches(batch_format="pyarrow", batch_size=4096):
        yield from batch.to_pylist()


def manifest_header(cfg: BuildConfig, tok: TextTokenizer, plan_partitions: int) -> dict:
    """The manifest fields that come before the shard list."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "seq_len": cfg.seq_len,
        "image_tokens": cfg.image_tokens,
        "image_markers": cfg.image_markers,
        "max_images": cfg.max_images,
        "image_size": cfg.image_size,
        "jpeg_quality": cfg.jpeg_quality,
        "tokenizer": tok.manifest(),
        "special_tokens": tok.ids,
        "plan_partitions": plan_partitions,
    }


def write_manifest(f, header: dict, shards: Iterator[dict], tail: dict, cfg: BuildConfig) -> dict:
    """Stream the manifest to the text file ``f``: ``header``, the shard entries of ``shards``
    (SHARD_STATS rows in order) one by one, then the totals and the realized mix (accumulated in
    O(streams) numbers) and ``tail``. Returns (totals, realized mix)."""
    target = parse_mix(cfg.mix)
    f.write(json.dumps(header, indent=1)[:-2] + ',\n "shards": [')
    by_stream: dict[str, int] = {}
    weights: dict[str, float] = {}
    n = {"shards": 0, "sequences": 0, "images": 0, "examples": 0, "bytes": 0}
    for r in shards:
        tokens, examples, w = json.loads(r["tokens"]), json.loads(r["examples"]), json.loads(r["mix"])
        total_w = sum(w.values())
        entry = {
            "path": r["path"],
            "bytes": r["bytes"],
            "sha256": r["sha256"],
            "sequences": r["sequences"],
            "images": r["images"],
            "tokens": tokens,
            "examples": examples,
            "mix": {g: round(w.get(g, 0.0) / total_w, 6) if total_w else 0.0 for g in target},
            "full": r["full"],
        }
        f.write(("\n  " if n["shards"] == 0 else ",\n  ") + json.dumps(entry, separators=(",", ":")))
        for k, v in tokens.items():
            by_stream[k] = by_stream.get(k, 0) + v
        for g, v in w.items():
            weights[g] = weights.get(g, 0.0) + v
        n["shards"] += 1
        n["sequences"] += r["sequences"]
        n["images"] += r["images"]
        n["examples"] += sum(examples.values())
        n["bytes"] += r["bytes"]
    non_pad = sum(by_stream.values())
    totals = {
        **{k: n[k] for k in ("shards", "sequences", "images")},
        "tokens": non_pad,
        "tokens_by_stream": dict(sorted(by_stream.items())),
        "examples": n["examples"],
        "bytes": n["bytes"],
        "fill": round(non_pad / (n["sequences"] * cfg.seq_len), 6) if n["sequences"] else 0.0,
    }
    all_w = sum(weights.values())
    mix = {
        "target": {k: round(v, 6) for k, v in target.items()},
        "unit": cfg.mix_unit,
        "realized": {g: round(weights.get(g, 0.0) / all_w, 6) if all_w else 0.0 for g in target},
    }
    f.write("\n ],\n")
    body = json.dumps({"totals": totals, "mix": mix, **tail}, indent=1)
    f.write(body[2:])
    return {"totals": totals, "mix": mix}


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
        placed_bytes = sum(v for k, v in sums.items() if k.startswith("bytes/"))
        payload = data.kept("examples", PAYLOAD)
        where = data.kept("placements", WHERE)
        n_rows = data.rows("examples") + data.rows("placements")
        routed = cogroup(
            {"ex": payload, "pl": where}, {"ex": "key_hash", "pl": "key_hash"},
            max(1, math.ceil(placed_bytes / BYTES_PER_TASK), partitions_for(n_rows, 1_000_000)), route,
            schemas={"ex": subschema(EXAMPLE, PAYLOAD), "pl": subschema(PLACEMENT, WHERE)},
        )  # fmt: skip
        tasks = min(n_shards, max(1, math.ceil(placed_bytes / BYTES_PER_TASK)))
        shards = cogroup(
            {"r": routed}, {"r": "_s"}, tasks, write_shards, (ctx.root, cfg, self.tok.ids["pad"], plan_fp),
            {"r": ROUTED},
        ).materialize()  # fmt: skip
        resumed = sum_counts(shards.map_batches(_resumed_counts, batch_format="pyarrow"))
        summary = plan_summary(sums, cfg)
        header = manifest_header(cfg, self.tok, info.get("partitions", 1))
        tail = {"epochs": summary["epochs"], "build": to_dict(cfg), "mm1data_version": __version__}
        fs, path = fsspec_fs(ctx.work.url("manifest.json"))
        with fs.open(path, "w") as f:
            ordered = sorted_rows(shards, ["shard_part", "shard_index"], resumed.get("shards", 0))
            written = write_manifest(f, header, ordered, tail, cfg)
        written["totals"]["attainable_fill"] = round(summary["attainable_fill"], 6)
        _drop_stale_shards(ctx.root, shards)
        ctx.info["write"] = {
            **written,
            "examples": {k: v for k, v in summary.items() if k not in ("epochs", "attainable_fill")},
            "epochs": summary["epochs"],
            "kept_from_earlier_run": resumed.get("resumed", 0),
        }
        return {"shards": shards}

    def finish(self, ctx: Context) -> None:
        """Publish ``manifest.json``: the last file a build writes."""
        fs, path = fsspec_fs(ctx.work.url("manifest.json"))
        dest_fs, dest = fsspec_fs(f"{ctx.root}/manifest.json")
        dest_fs.pipe_file(dest, fs.cat_file(path))


def _resumed_counts(table: pa.Table) -> pa.Table:
    n = int(pc.sum(table.column("resumed").cast(pa.int64())).as_py() or 0)
    return pa.table({"key": ["resumed", "shards"], "n": pa.array([n, table.num_rows], pa.int64())})


def _partition_counts(table: pa.Table) -> pa.Table:
    parts = table.column("shard_part").to_numpy()
    keys, n = np.unique(parts, return_counts=True)
    return pa.table({"key": [str(int(k)) for k in keys], "n": pa.array(n, pa.int64())})


def _drop_stale_shards(root: str, shards) -> None:
    """Remove shard tars (and leftovers of killed writes) that are not in this plan: partition by
    partition, so the driver lists one partition's shards at a time."""
    per_part = {
        int(k): v
        for k, v in sum_counts(shards.map_batches(_partition_counts, batch_format="pyarrow")).items()
    }
    fs, path = fsspec_fs(root)
    listed_parts = {
        int(p.rsplit("/", 1)[-1].split("-")[1]) for p in fs.glob(f"{path}/shard-?????-00000.tar*")
    }
    for part in sorted(listed_parts | set(per_part)):
        for p in fs.glob(f"{path}/shard-{part:05d}-*.tar*"):
            name = p.rsplit("/", 1)[-1]
            index = int(name.split("-")[2].split(".")[0])
            if index >= per_part.get(part, 0) or not name.endswith(".tar"):
                fs.rm(p)
