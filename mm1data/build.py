"""``mm1data build``: ingest → filter → dedup → tokenize → pack + mix → write, on Ray Data.

Phases (each one Ray primitive or a driver step):

1. ingest, filter, dedup: the stream datasets of :mod:`mm1data.ingest`, :mod:`mm1data.filters`
   and :mod:`mm1data.dedup`; rejected records go to ``output/rejects/<stream>``.
2. tokenize (``map_batches`` on workers): kept records → examples (:mod:`mm1data.tokens.render`),
   images resized and re-encoded once; the examples are materialized.
3. plan (driver, metadata only: stream, tokens, images per example, sorted by example key): select
   and interleave to the mix, cut into shards, pack (:mod:`mm1data.pack.plan`).
4. write (``groupby("shard").map_groups`` on workers): each shard's examples are routed to one
   group and written as one deterministic tar, so the bytes do not depend on the worker count.
5. ``manifest.json`` last; ``stats.json`` and a summary table.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pyarrow as pa

from mm1data import __version__
from mm1data.config import BuildConfig, Recipe, to_dict
from mm1data.errors import UsageError
from mm1data.io.fs import fsspec_fs
from mm1data.pack.mix import parse_mix
from mm1data.pack.plan import Plan, plan_build
from mm1data.report import StageLog
from mm1data.runners.workdir import WorkDir, fingerprint
from mm1data.schemas import REJECT
from mm1data.shards.writer import FORMAT, SHARD_STATS, VERSION, shard_name, write_shard
from mm1data.tokens.render import METADATA_COLUMNS, render_batch
from mm1data.tokens.tokenizer import TextTokenizer


def synthetic_share(cfg: BuildConfig, target: dict[str, float]) -> float:
    """``synthetic_ratio``, or by default the synthetic_caption share of all captions in the mix."""
    if cfg.synthetic_ratio is not None:
        return cfg.synthetic_ratio
    syn = target.get("synthetic_caption", 0.0)
    return syn / (syn + target.get("caption", 0.0)) if syn else 0.0


def stage_of(reject_stage: str) -> str:
    """The build phase a record reject belongs to: ingest, download, dedup, or filter (every filter
    stage)."""
    return reject_stage if reject_stage in ("ingest", "download", "dedup") else "filter"


def route(batch: pa.Table, placements: dict[str, list[tuple[int, int, int]]]) -> pa.Table:
    """Ray Data UDF: one row per placement (shard, seq, slot) of each example; unused examples drop.
    ``placements`` may be an ObjectRef to the dict (Ray Data passes fn_args through unresolved)."""
    if not isinstance(placements, dict):
        import ray

        placements = ray.get(placements)
    keys = batch.column("key").to_pylist()
    take, shard, seq, slot = [], [], [], []
    for i, k in enumerate(keys):
        for s, q, j in placements.get(k, ()):
            take.append(i)
            shard.append(s)
            seq.append(q)
            slot.append(j)
    cols = [
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
    out = batch.select(cols).take(pa.array(take, pa.int64()))
    return (
        out.append_column("shard", pa.array(shard, pa.int64()))
        .append_column("seq", pa.array(seq, pa.int64()))
        .append_column("slot", pa.array(slot, pa.int64()))
    )


def _retract(output: str, restart: bool) -> None:
    """Make ``output`` not look complete before anything changes: ``manifest.json`` goes first.
    With ``restart`` every earlier file goes too (shards, rejects, stats and the ``_work`` stages)."""
    fs, root = fsspec_fs(output)
    if fs.exists(f"{root}/manifest.json"):
        fs.rm(f"{root}/manifest.json")
    if restart:
        for path in fs.glob(f"{root}/shard-*.tar*"):
            fs.rm(path)
        for name in ("rejects", "stats.json", "_work"):
            if fs.exists(f"{root}/{name}"):
                fs.rm(f"{root}/{name}", recursive=True)
    fs.makedirs(root, exist_ok=True)


def _write_parquet(table: pa.Table, url: str) -> None:
    import pyarrow.parquet as pq

    fs, path = fsspec_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def _sorted_rejects(table: pa.Table) -> pa.Table:
    """Rejects in a fixed order (stage, reason, id), so reruns and resumes write the same bytes."""
    return table.sort_by([("stage", "ascending"), ("reason", "ascending"), ("id", "ascending")])


def _example_rejects(meta: pa.Table, rows: np.ndarray, stage: str, reasons: list[str]) -> pa.Table:
    ids = meta.column("id").to_pylist()
    parts = meta.column("part").to_pylist()
    streams = meta.column("stream").to_pylist()
    lineage = meta.column("lineage").to_pylist()
    details = meta.column("detail").to_pylist()
    out = [
        {
            "id": ids[i] if not parts[i] else f"{ids[i]}#{parts[i]}",
            "stream": streams[i],
            "stage": stage,
            "reason": r,
            "detail": details[i],
            "lineage": lineage[i],
        }
        for i, r in zip(rows.tolist(), reasons, strict=True)
    ]
    return _sorted_rejects(pa.Table.from_pylist(out, schema=REJECT))


def _source_signature(units: dict[str, list]) -> list:
    """Each source file with its size and mtime, so an edited input invalidates the ingest stage."""
    sig = []
    for stream, us in sorted(units.items()):
        for u in us:
            fs, path = fsspec_fs(u.path)
            try:
                info = fs.info(path)
                sig.append([stream, u.to_json(), info.get("size"), str(info.get("mtime", info.get("ETag")))])
            except (FileNotFoundError, OSError):
                sig.append([stream, u.to_json(), None, None])
    return sig


def stage_fingerprints(
    recipe: Recipe, units: dict[str, list], tok: TextTokenizer, ratio: float
) -> dict[str, str]:
    """The chained fingerprint of each resumable stage: a stage's changes (or its upstream's)
    invalidate it and everything after it, never what comes before."""
    fps = {
        "ingest": fingerprint(
            __version__,
            to_dict(recipe.sources),
            to_dict(recipe.ingest),
            _source_signature(units),
            to_dict(recipe.download),
        )
    }
    fps["filter"] = fingerprint(fps["ingest"], to_dict(recipe.filters))
    fps["dedup"] = fingerprint(fps["filter"], to_dict(recipe.dedup))
    fps["examples"] = fingerprint(fps["dedup"], to_dict(recipe.build), tok.manifest(), ratio)
    return fps


CURATE_STAGES = ("ingest", "filter", "dedup")


def curate(work: WorkDir, fps: dict[str, str], compute: dict, log: StageLog) -> tuple[dict, dict]:
    """Ingest → filter → dedup with a checkpoint after each; starts after the last stage whose
    marker matches. ``compute[stage](streams)`` builds a stage. Returns (streams, dedup stats)."""
    done = [i for i, name in enumerate(CURATE_STAGES) if work.is_done(name, fps[name])]
    first = done[-1] + 1 if done else 0
    streams: dict = {}
    dedup_stats: dict = {}
    if first:
        name = CURATE_STAGES[first - 1]
        marker = work.marker(name) or {}
        streams = {s: work.read_dataset(name, s).materialize() for s in marker["rows"]}
        dedup_stats = marker.get("dedup", {})
        log.resumed(name, marker["rows"])
    for name in CURATE_STAGES[first:]:
        t = time.perf_counter()
        work.reset(name)
        stats: dict = {}
        streams = compute[name](streams, stats)
        rows = {s: work.write_dataset(ds, name, s) for s, ds in streams.items()}
        info = {"rows": rows}
        if name == "dedup":
            dedup_stats = info["dedup"] = stats
        work.commit(name, fps[name], info)
        # read back materialized: the next stage's actor pool then never waits on read tasks for
        # CPUs it holds itself (with 1-CPU nodes, fractional actors fragment every node)
        streams = {s: work.read_dataset(name, s).materialize() for s in rows}
        log.stage(name, time.perf_counter() - t, rows=rows)
    return streams, dedup_stats


def run_build(recipe: Recipe, output: str, restart: bool = False, log: StageLog | None = None) -> dict:
    """Build ``recipe`` into ``output`` (local folder or ``s3://``); returns (and writes) the stats.

    Resumable: each stage leaves a marker under ``output/_work`` (:mod:`mm1data.runners.workdir`),
    so a rerun with the same arguments redoes only unfinished or invalidated work; ``restart``
    starts from scratch."""
    from mm1data.dedup import dedup_streams
    from mm1data.filters import apply_filters
    from mm1data.ingest.job import plan_streams, read_streams
    from mm1data.ingest.synthetic import read_synthetic, synthetic_index
    from mm1data.runners.pipeline import count_stream, kept_rows, to_rejects
    from mm1data.runners.ray_session import ray_session

    log = log or StageLog(quiet=True)
    cfg = recipe.build
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    tok = TextTokenizer(cfg.tokenizer)  # fail fast on a bad tokenizer, mix or source
    target = parse_mix(cfg.mix)
    units = plan_streams(recipe)
    synthetic = synthetic_index(read_synthetic(recipe.sources.synthetic_captions)[0])
    _retract(output, restart)
    work = WorkDir(output)
    root = output.rstrip("/")
    ratio = synthetic_share(cfg, target)
    fps = stage_fingerprints(recipe, units, tok, ratio)
    from mm1data.download.job import run_download_phase

    compute = {
        "ingest": lambda _, stats: run_download_phase(read_streams(recipe, units, synthetic), recipe, output),
        "filter": lambda streams, stats: apply_filters(streams, recipe.filters),
        "dedup": lambda streams, stats: dedup_streams(streams, recipe.dedup, stats),
    }
    with ray_session(recipe.ray.address, recipe.ray.num_cpus, quiet=not log.show_progress):
        import ray

        timings["ray_start"] = time.perf_counter() - t0
        t = time.perf_counter()
        if work.is_done("examples", fps["examples"]):
            marker = work.marker("examples") or {}
            record_stats, dedup_stats = marker["streams"], marker["dedup"]
            log.resumed("examples", {"examples": marker["rows"]})
        else:
            streams, dedup_stats = curate(work, fps, compute, log)
            record_stats, examples = {}, []
            for stream, ds in streams.items():
                record_stats[stream] = count_stream(ds, stream).as_dict()
                rejects = pa.concat_tables(
                    [
                        ray.get(r)
                        for r in ds.map_batches(
                            to_rejects, fn_args=(stream,), batch_format="pyarrow"
                        ).to_arrow_refs()
                    ]
                    or [REJECT.empty_table()]
                )
                _write_parquet(_sorted_rejects(rejects), f"{root}/rejects/{stream}/part-0.parquet")
                kept = ds.map_batches(kept_rows, batch_format="pyarrow")
                examples.append(
                    kept.map_batches(
                        render_batch,
                        fn_args=(stream, cfg, ratio),
                        batch_format="pyarrow",
                        batch_size=64,
                        concurrency=cfg.workers,
                    )
                )
            timings["ingest_filter_dedup"] = time.perf_counter() - t
            t = time.perf_counter()
            work.reset("examples")
            ex_all = examples[0].union(*examples[1:]) if len(examples) > 1 else examples[0]
            n = work.write_dataset(ex_all, "examples")
            work.commit(
                "examples", fps["examples"], {"rows": n, "streams": record_stats, "dedup": dedup_stats}
            )
            log.stage("tokenize", time.perf_counter() - t, examples=n)
        ex_ds = work.read_dataset("examples")
        parts = [ray.get(r) for r in ex_ds.select_columns(METADATA_COLUMNS).to_arrow_refs()]
        meta = pa.concat_tables(parts) if parts else None
        timings["tokenize"] = time.perf_counter() - t
        if meta is None or meta.num_rows == 0:
            raise UsageError("nothing left to build: every record was rejected")
        t = time.perf_counter()
        meta = meta.sort_by("key")
        keys = meta.column("key").to_pylist()
        if len(set(keys)) != len(keys):
            raise RuntimeError("example keys are not unique (records with the same lineage and id)")
        bad = np.flatnonzero(~np.asarray(meta.column("reason").is_null()))
        good = np.flatnonzero(np.asarray(meta.column("reason").is_null()))
        g = meta.take(pa.array(good))
        plan = plan_build(
            np.array(g.column("stream").to_pylist(), dtype=object),
            g.column("n_tokens").to_numpy(),
            g.column("n_images").to_numpy(),
            cfg,
            g.column("image_bytes").to_numpy(),
        )
        gkeys = g.column("key").to_pylist()
        plan_fp = fingerprint(
            fps["examples"], [[[gkeys[i] for i in seq] for seq in sh] for sh in plan.shards]
        )
        placements: dict[str, list[tuple[int, int, int]]] = {}
        for s, shard in enumerate(plan.shards):
            for q, seq in enumerate(shard):
                for j, i in enumerate(seq):
                    placements.setdefault(gkeys[i], []).append((s, q, j))
        reasons = meta.column("reason").to_pylist()
        _write_parquet(
            _example_rejects(meta, bad, "tokenize", [reasons[i] for i in bad]),
            f"{root}/rejects/tokenize/part-0.parquet",
        )
        unused = good[plan.copies == 0]
        streams_g = g.column("stream").to_pylist()
        from mm1data.pack.mix import mix_group

        why = [
            "mix_surplus" if mix_group(streams_g[i], target) in target else "not_in_mix"
            for i in np.flatnonzero(plan.copies == 0)
        ]
        _write_parquet(_example_rejects(meta, unused, "mix", why), f"{root}/rejects/mix/part-0.parquet")
        timings["plan"] = time.perf_counter() - t
        log.stage("plan", time.perf_counter() - t, shards=len(plan.shards))
        t = time.perf_counter()
        finished = _finished_shards(work, root, plan_fp, len(plan.shards))
        pending = {k: [p for p in ps if p[0] not in finished] for k, ps in placements.items()}
        pending = {k: ps for k, ps in pending.items() if ps}
        rows = []
        todo = len(plan.shards) - len(finished)
        if todo:
            placements_ref = ray.put(pending)
            routed = ex_ds.map_batches(route, fn_args=(placements_ref,), batch_format="pyarrow")
            written = routed.groupby("shard", num_partitions=max(1, min(todo, cfg.workers or 2))).map_groups(
                write_shard,
                fn_args=(root, cfg.seq_len, tok.ids["pad"], cfg.image_tokens, plan_fp),
                batch_format="pyarrow",
                concurrency=cfg.workers,
            )
            rows = [ray.get(r) for r in written.to_arrow_refs()]
        shard_rows = sorted(
            pa.concat_tables(rows or [SHARD_STATS.empty_table()]).to_pylist() + list(finished.values()),
            key=lambda r: r["shard"],
        )
        _drop_stale_shards(root, len(plan.shards))
        timings["write"] = time.perf_counter() - t
        log.stage("write", time.perf_counter() - t, written=todo, kept_from_earlier_run=len(finished))
    manifest = make_manifest(cfg, tok, plan, shard_rows)
    stats = {
        "output": output,
        "streams": record_stats,
        "dedup": dedup_stats,
        "examples": _example_counts(meta, good, bad, plan, why),
        "mix": manifest["mix"],
        "epochs": manifest["epochs"],
        "totals": manifest["totals"],
        "shards": len(shard_rows),
        "resumed": log.resumed_stages + (["write (partly)"] if finished else []),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    fs, path = fsspec_fs(root)
    fs.pipe_file(f"{path}/stats.json", json.dumps(stats, indent=2).encode())
    fs.pipe_file(f"{path}/manifest.json", json.dumps(manifest, indent=1).encode())  # last: means complete
    log.stage("build", stats["wall_s"], shards=len(shard_rows), sequences=manifest["totals"]["sequences"])
    return stats


def _finished_shards(work: WorkDir, root: str, plan_fp: str, n_shards: int) -> dict[int, dict]:
    """Shards an earlier run of the same plan wrote completely (marker matches, tar size right)."""
    fs, path = fsspec_fs(root)
    done = {}
    for s in range(n_shards):
        name = shard_name(s)
        m = work.shard_marker(name)
        if m and m.get("fingerprint") == plan_fp and fs.exists(f"{path}/{name}"):
            if fs.size(f"{path}/{name}") == m["bytes"]:
                done[s] = {k: v for k, v in m.items() if k != "fingerprint"}
    return done


def _drop_stale_shards(root: str, n_shards: int) -> None:
    """Remove shard tars (and leftovers of killed writes) an earlier, bigger plan left behind."""
    fs, path = fsspec_fs(root)
    keep = {shard_name(s) for s in range(n_shards)}
    for p in fs.glob(f"{path}/shard-*.tar*"):
        if p.rsplit("/", 1)[-1] not in keep:
            fs.rm(p)


def _example_counts(meta: pa.Table, good: np.ndarray, bad: np.ndarray, plan: Plan, why: list[str]) -> dict:
    streams = meta.column("stream").to_pylist()
    rendered = Counter(streams[i] for i in good.tolist())
    used = Counter(streams[i] for i, c in zip(good.tolist(), plan.copies.tolist(), strict=True) if c)
    placed = Counter()
    for i, c in zip(good.tolist(), plan.copies.tolist(), strict=True):
        placed[streams[i]] += c
    reasons = meta.column("reason").to_pylist()
    rejected = Counter(f"{streams[i]}/tokenize/{reasons[i]}" for i in bad.tolist())
    unused = [i for i, c in zip(good.tolist(), plan.copies.tolist(), strict=True) if not c]
    rejected.update(f"{streams[i]}/mix/{w}" for i, w in zip(unused, why, strict=True))
    return {
        "rendered": dict(sorted(rendered.items())),
        "used": dict(sorted(used.items())),
        "placed_with_repeats": dict(sorted(placed.items())),
        "rejected_by_reason": dict(sorted(rejected.items())),
    }


def make_manifest(cfg: BuildConfig, tok: TextTokenizer, plan: Plan, shard_rows: list[dict]) -> dict:
    """The ``manifest.json`` of a build (see ``schemas/packed-v1.md``)."""
    shards, by_stream = [], Counter()
    for i, r in enumerate(shard_rows):
        tokens = json.loads(r["tokens"])
        by_stream.update(tokens)
        shards.append(
            {
                "path": r["path"],
                "bytes": r["bytes"],
                "sha256": r["sha256"],
                "sequences": r["sequences"],
                "images": r["images"],
                "tokens": tokens,
                "examples": json.loads(r["examples"]),
                "mix": {k: round(v, 6) for k, v in plan.realized_per_shard[i].items()},
                "full": i < len(shard_rows) - 1,
            }
        )
    n_seq = sum(s["sequences"] for s in shards)
    non_pad = sum(by_stream.values())
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
        "mix": {
            "target": {k: round(v, 6) for k, v in plan.target.items()},
            "unit": plan.unit,
            "realized": {k: round(v, 6) for k, v in plan.realized.items()},
            "realized_per_shard": [{k: round(v, 6) for k, v in m.items()} for m in plan.realized_per_shard],
        },
        "epochs": plan.epochs,
        "shards": shards,
        "totals": {
            "shards": len(shards),
            "sequences": n_seq,
            "images": sum(s["images"] for s in shards),
            "tokens": non_pad,
            "tokens_by_stream": dict(sorted(by_stream.items())),
            "examples": sum(sum(s["examples"].values()) for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "fill": round(non_pad / (n_seq * cfg.seq_len), 6) if n_seq else 0.0,
            "attainable_fill": round(plan.bound, 6),
        },
        "build": to_dict(cfg),
        "mm1data_version": __version__,
    }
