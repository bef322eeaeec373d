"""Growth curves: memory and time of mm1data at several sizes, and throughput per core vs peers.

Every measurement runs in a fresh child process while this process samples the memory of the
child's whole process tree (driver, Ray workers) from ``/proc`` every 0.2 s:

- **tier A**, end to end: ``mm1data build --mix 45:45:10`` on generated records of every stream
  (``benchmarks/growth_data.py``: planted exact and near duplicates, a boilerplate text repeated
  1,000 times, 2 % bad records) at several sizes, ``image_size`` 64. Checked per size: read =
  kept + rejected, every full shard within ±1 point of the mix, recall of the planted duplicates;
  and, at the smallest size, the same shard sha256 with 1 and with 2 Ray CPUs.
- **tier B**, the global phases alone on generated metadata: plan + pack (one task per plan
  partition), dedup components (large-star / small-star rounds, survivors), rejects (parts by id
  hash, sorted), the streamed manifest.
- **throughput**: caption pairs with ~640 px images through the whole build (378² output), next
  to the composition a user would run instead on the same data in the same invocation: an
  img2dataset-style loop (Pillow decode → resize → center crop → JPEG → tar), datatrove's
  LanguageFilter + Gopher + C4 on the captions, and datasketch MinHash of the captions.

Printed per size: wall seconds per phase, driver peak RSS (and its anonymous part: RSS also
counts object-store pages the driver maps while reading task results), the largest worker's peak anonymous
RSS, peak object-store spill, and the log-log slope of time per phase from the smallest to the
largest size. Criteria (issue 10): driver <= 600 MiB and within +10 %; largest worker <= 2 GiB
and within +20 %; slope <= 1.1 per phase.

    python benchmarks/growth.py --tier A --sizes 10000,30000,100000
    python benchmarks/growth.py --tier B --sizes 100000,1000000,10000000
    python benchmarks/growth.py --throughput 2000
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
MIB = 1024**2


# --- memory of a process tree -----------------------------------------------------------------


def _children(pid: int) -> set[int]:
    """``pid`` and all its descendants."""
    parent: dict[int, int] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    parent[int(p)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [c for c, pp in parent.items() if pp in frontier and c not in tree]
        tree.update(kids)
        frontier = kids
    return tree


def _status(pid: int) -> tuple[int, int, str]:
    """(VmRSS, RssAnon) in bytes and the command line of ``pid``."""
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return 0, 0, ""
    return rss, anon, cmd


class Sampler(threading.Thread):
    """Peak driver RSS, peak anonymous RSS of the largest Ray worker, and peak spill bytes."""

    def __init__(self, pid: int, spill: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.spill = pid, spill
        self.driver = self.driver_anon = self.worker = self.spilled = 0
        self.worker_cmd = ""
        self.by_cmd: dict[str, int] = {}  # peak anonymous RSS per Ray task name (a few dozen)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for p in _children(self.pid):
                rss, anon, cmd = _status(p)
                if p == self.pid:
                    self.driver = max(self.driver, rss)
                    self.driver_anon = max(self.driver_anon, anon)
                elif "ray::" in cmd or "default_worker.py" in cmd:
                    name = cmd.split(" ")[0][:110]
                    self.by_cmd[name] = max(self.by_cmd.get(name, 0), anon)
                    if anon > self.worker:
                        self.worker, self.worker_cmd = anon, name
            if self.spill.exists():
                size = sum(f.stat().st_size for f in self.spill.rglob("*") if f.is_file())
                self.spilled = max(self.spilled, size)
            self.stop.wait(0.2)


def run_child(args: list[str], env: dict | None = None) -> dict:
    """Run ``growth.py --child ...`` while sampling its memory; returns its JSON result + memory."""
    spill = Path(tempfile.mkdtemp(prefix="mm1data-spill-"))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_object_spilling_config": json.dumps(
            {"type": "filesystem", "params": {"directory_path": str(spill)}}
        ),
        **(env or {}),
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__)), "--child", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    sampler = Sampler(proc.pid, spill)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    shutil.rmtree(spill, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}):\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(
        driver_mib=sampler.driver / MIB,
        driver_anon_mib=sampler.driver_anon / MIB,
        worker_mib=sampler.worker / MIB,
        spill_mib=sampler.spilled / MIB,
        worker_cmd=sampler.worker_cmd,
        top_workers=sorted(((v / MIB, k) for k, v in sampler.by_cmd.items()), reverse=True)[:4],
        child_wall_s=time.perf_counter() - t0,
    )
    return result


def slope(sizes: list[int], times: list[float]) -> float:
    """Log-log slope of time against size from the smallest to the largest size."""
    if len(sizes) < 2 or min(times) <= 0:
        return float("nan")
    return math.log(times[-1] / times[0]) / math.log(sizes[-1] / sizes[0])


# --- tier A: the whole build ------------------------------------------------------------------------


def recipe_for(data: Path, image_size: int = 64) -> dict:
    """The recipe of a tier A build over generated data."""
    return {
        "sources": {
            "captions": [{"path": str(data / "captions.parquet"), "format": "parquet"}],
            "interleaved": [{"path": str(data / "interleaved.parquet"), "format": "obelics"}],
            "text": [{"path": str(data / "text.jsonl.gz")}],
        },
        "build": {"image_size": image_size, "mix": "45:45:10"},
    }


def child_build(data: Path, out: Path, num_cpus: int, image_size: int) -> dict:
    """Tier A child: one ``mm1data build``; returns its timings and the driver RSS after each phase
    (the parent checks the output: :func:`build_checks`)."""
    import dataclasses

    from mm1data.build import run_build
    from mm1data.config import RayConfig, Recipe, from_dict

    recipe = from_dict(Recipe, recipe_for(data, image_size))
    recipe = dataclasses.replace(recipe, ray=RayConfig(num_cpus=num_cpus))
    stats = run_build(recipe, str(out), restart=True)
    return {
        "timings": stats["timings_s"],
        "driver_rss": stats.get("driver_rss_mib", {}),
        "wall_s": stats["wall_s"],
    }


def build_checks(data: Path, out: Path) -> dict:
    """Conservation, mix, recall and shard hashes of a tier A build, read from its output by this
    (the parent) process: reading every reject in the build's process would add to the driver
    peak that the build is measured by."""
    import pyarrow.dataset as pads

    stats = json.loads((out / "stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    truth = json.loads((data / "truth.json").read_text())
    conserved = all(s["read"] == s["kept"] + s["rejected"] for s in stats["streams"].values())
    target = manifest["mix"]["target"]
    full = [s for s in manifest["shards"] if s["full"]]
    dev_full = max((abs(s["mix"][g] - w) for s in full for g, w in target.items()), default=0.0)
    dev_all = max((abs(s["mix"][g] - w) for s in manifest["shards"] for g, w in target.items()), default=0.0)
    rejects = pads.dataset(out / "rejects").to_table(columns=["id", "stream", "stage", "reason"]).to_pylist()
    # reject ids carry the source file's stem ("captions:cap00000075"); the truth has bare ids
    dedup = {r["id"].split(":", 1)[-1] for r in rejects if r["stage"] == "dedup"}
    other = {r["id"].split(":", 1)[-1] for r in rejects if r["stage"] != "dedup"}

    def recall(pairs: list) -> tuple[int, int]:
        live = [p for p in pairs if p[0] not in other and p[1] not in other]
        return sum(p[0] in dedup or p[1] in dedup for p in live), len(live)

    near_text = [p for p in truth["near_text"] if p[2] >= 0.8]
    return {
        "records": sum(truth["records"].values()),
        "streams": {k: {x: v[x] for x in ("read", "kept", "rejected")} for k, v in stats["streams"].items()},
        "conserved": conserved,
        "shards": manifest["totals"]["shards"],
        "full_shards": len(full),
        "mix_dev_full_pt": round(100 * dev_full, 3),
        "mix_dev_any_pt": round(100 * dev_all, 3),
        "recall": {
            "exact_text": recall(truth["exact_text"]),
            "near_text_j>=0.8": recall(near_text),
            "exact_image": recall(truth["exact_image"]),
            "near_image": recall(truth["near_image"]),
            "boilerplate": (
                sum(b in dedup for b in truth["boilerplate"]),
                max(0, len(truth["boilerplate"]) - 1),
            ),
        },
        "sha256": [s["sha256"] for s in manifest["shards"]],
    }


def tier_a(sizes: list[int], work: Path) -> None:
    from growth_data import generate

    rows = []
    for n in sizes:
        data = work / f"data-{n}"
        if not (data / "truth.json").exists():
            t = time.perf_counter()
            generate(data, n, seed=n)
            print(f"generated {n} records in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        res = run_child(["build", str(data), str(work / f"out-{n}"), "2", "64"])
        res.update(build_checks(data, work / f"out-{n}"))
        rows.append((n, res))
        print(
            f"tier A {n}: {res['wall_s']:.0f} s; driver RSS after each: {res['driver_rss']}", file=sys.stderr
        )
    n0 = sizes[0]
    run_child(["build", str(work / f"data-{n0}"), str(work / f"out-{n0}-1cpu"), "1", "64"])
    same = build_checks(work / f"data-{n0}", work / f"out-{n0}-1cpu")["sha256"] == rows[0][1]["sha256"]
    print_table("A", rows, ["ingest", "filter", "dedup", "tokenize", "plan", "write", "rejects"])
    for n, r in rows:
        rec = ", ".join(f"{k} {a}/{b}" for k, (a, b) in r["recall"].items())
        print(
            f"  {n:>9}: read = kept + rejected: {r['conserved']}; "
            f"shards {r['shards']} ({r['full_shards']} full); "
            f"max mix deviation {r['mix_dev_full_pt']} pt (full shards), {r['mix_dev_any_pt']} pt (any); "
            f"recall {rec}"
        )
    print(f"  shard sha256 with 1 and 2 Ray CPUs at {n0}: {'identical' if same else 'DIFFERENT'}")


# --- tier B: the global phases on generated metadata ----------------------------------------------


def _meta_block(batch, seed: int):
    import numpy as np
    import pyarrow as pa

    from mm1data.runners.shuffle import hash64

    ids = batch["id"]
    rng = np.random.default_rng([seed, int(ids[0])])
    n = len(ids)
    kind = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    stream = np.array(["caption", "interleaved", "text"], dtype=object)[kind]
    images = np.where(kind == 0, 1, np.where(kind == 1, rng.integers(1, 8, n), 0))
    tokens = np.where(
        kind == 0,
        rng.integers(150, 200, n),
        np.where(kind == 1, images * 146 + rng.integers(100, 2000, n), rng.integers(300, 4096, n)),
    )
    keys = [f"{s}:gen:{i}:{i}#0" for s, i in zip(stream.tolist(), ids.tolist(), strict=True)]
    return pa.table(
        {
            "key": keys,
            "key_hash": hash64(keys),
            "stream": stream.tolist(),
            "id": [str(i) for i in ids.tolist()],
            "part": np.zeros(n, np.int32),
            "lineage": [{"source": "gen", "offset": int(i)} for i in ids.tolist()],
            "n_tokens": tokens.astype(np.int32),
            "n_images": images.astype(np.int32),
            "image_bytes": (images * 20_000).astype(np.int64),
        }
    )


def _edges_block(batch, n: int):
    """Duplicate edges over n members: 10 % of members in clusters of 2–5, and one cluster of 1,000."""
    import numpy as np

    from mm1data.dedup.components import undirected
    from mm1data.runners.shuffle import mix64

    ids = batch["id"].astype(np.int64)
    ids = ids[ids % 10 == 0]  # every tenth member starts a chain of up to 4 more
    rng = np.random.default_rng(int(batch["id"][0]) + 1)
    length = rng.integers(1, 5, len(ids))
    a = np.concatenate([ids + k for k in range(4)])
    b = np.concatenate([ids + k + 1 for k in range(4)])
    keep = np.concatenate([length > k for k in range(4)])
    a, b = a[keep], b[keep]
    big = ids[ids < 10_000]
    a, b = np.concatenate([a, np.full(len(big), n + 7)]), np.concatenate([b, big])
    return undirected(mix64(a), mix64(b), np.full(len(a), 0.9))


def _members_block(batch):
    import numpy as np
    import pyarrow as pa

    from mm1data.runners.shuffle import mix64

    ids = batch["id"].astype(np.int64)
    names = [f"text:m{i}" for i in ids.tolist()]
    return pa.table(
        {
            "member": mix64(ids),
            "name": names,
            "rank": [f"1{'0' * 16}2m{i:012d}" for i in ids.tolist()],
            "check": ids,
            "doc": np.zeros(len(ids), np.int64),
        }
    )


def _rejects_block(batch):
    import numpy as np
    import pyarrow as pa

    from mm1data.runners.shuffle import hash64
    from mm1data.schemas import REJECT

    ids = [f"r{i}" for i in batch["id"].tolist()]
    n = len(ids)
    rng = np.random.default_rng(int(batch["id"][0]))
    reasons = np.array(["too_few_words", "exact_duplicate", "mix_surplus", "image_undecodable"])[
        rng.integers(0, 4, n)
    ]
    t = pa.table(
        {
            "id": ids,
            "stream": ["text"] * n,
            "stage": ["filter"] * n,
            "reason": reasons.tolist(),
            "detail": [None] * n,
            "score": [None] * n,
            "duplicate_of": [None] * n,
            "lineage": [{"source": "gen", "offset": int(i)} for i in batch["id"].tolist()],
        },
        schema=REJECT,
    )
    folders = pa.array(["text"] * n)
    return t.append_column("_folder", folders).append_column("_k", pa.array(hash64(ids)))


def _shard_rows_block(batch):
    import numpy as np
    import pyarrow as pa

    ids = batch["id"].astype(np.int64)
    n = len(ids)
    return pa.table(
        {
            "shard_part": (ids // 100).astype(np.int32),
            "shard_index": (ids % 100).astype(np.int32),
            "path": [f"shard-{i // 100:05d}-{i % 100:05d}.tar" for i in ids.tolist()],
            "bytes": np.full(n, 10**9),
            "sha256": ["0" * 64] * n,
            "sequences": np.full(n, 1000),
            "images": np.full(n, 9000),
            "tokens": ['{"caption": 1800000, "interleaved": 1800000, "text": 400000}'] * n,
            "examples": ['{"caption": 10000, "interleaved": 900, "text": 200}'] * n,
            "mix": ['{"caption": 1800000, "interleaved": 1800000, "text": 400000}'] * n,
            "full": np.ones(n, bool),
            "resumed": np.zeros(n, bool),
        }
    )


def child_global(n: int, out: Path) -> dict:
    """Tier B child: the global phases on ``n`` generated rows; returns seconds per phase."""
    import ray
    import ray.data

    from mm1data.config import BuildConfig
    from mm1data.dedup import phases as dp
    from mm1data.pack.phase import EXAMPLES_PER_PARTITION, plan_partition
    from mm1data.runners.executor import resident_mib, write_rejects
    from mm1data.runners.ray_session import ray_session, release_memory
    from mm1data.runners.shuffle import RayDatasets, cogroup, partitions_for
    from mm1data.shards.format import Header, Mix, Tokenizer
    from mm1data.shards.phase import publish_manifest, sorted_tables

    timings: dict[str, float] = {}
    rss: dict[str, float] = {}

    def done(step: str, t: float) -> None:
        """Close a step as the executor closes a phase: collect, give freed memory back, measure."""
        timings[step] = time.perf_counter() - t
        gc.collect()
        release_memory()
        rss[step] = resident_mib()

    cfg = BuildConfig()
    eng = RayDatasets()
    blocks = max(2, n // 50_000)  # blocks of the same size at every n, as file-sized reads would give
    with ray_session(num_cpus=2):
        base = ray.data.range(n, override_num_blocks=blocks)
        t = time.perf_counter()
        meta = base.map_batches(
            _meta_block, fn_args=(1,), batch_format="numpy", batch_size=None
        ).materialize()
        parts = partitions_for(n, EXAMPLES_PER_PARTITION)
        placed = cogroup({"m": meta}, {"m": "key_hash"}, parts, plan_partition, (cfg, parts))
        placed.write_parquet(str(out / "placements"))
        del meta, placed
        done("plan+pack", t)

        t = time.perf_counter()
        edges = eng.keep(base.map_batches(_edges_block, fn_args=(n,), batch_format="numpy", batch_size=None))
        n_edges = eng.count(edges)
        old = dp.LOCAL_EDGES
        dp.LOCAL_EDGES = 0  # the distributed rounds at every size
        labels = dp.components(eng, edges, n_edges)
        dp.LOCAL_EDGES = old
        members = base.map_batches(_members_block, batch_format="numpy", batch_size=None)
        p = partitions_for(n, dp.ROWS_PER_PARTITION)
        info = cogroup(
            {"labels": labels, "members": members, "ends": eng.map(edges, dp._ends)},
            {"labels": "member", "members": "member", "ends": "member"},
            p,
            dp.member_info,
            schemas={"labels": dp.LABEL, "members": dp.MEMBERS, "ends": dp.ENDS},
        )
        removals = cogroup({"m": info}, {"m": "comp"}, p, dp.survivors, schemas={"m": dp.MEMBER_INFO})
        n_removed = eng.count(removals)
        del edges, labels, members, info, removals
        done("dedup components", t)

        t = time.perf_counter()
        rejects = base.map_batches(_rejects_block, batch_format="numpy", batch_size=None)
        write_rejects([rejects], str(out / "rejects"), n)
        del rejects
        done("rejects", t)

        t = time.perf_counter()
        shards = base.limit(max(1, n // 100)).map_batches(
            _shard_rows_block, batch_format="numpy", batch_size=None
        )
        target = {"caption": 0.45, "interleaved": 0.45, "text": 0.1}
        header = Header(
            seq_len=4096,
            image_tokens=144,
            max_images=16,
            image_size=378,
            jpeg_quality=90,
            tokenizer=Tokenizer(name="gen", sha256="0" * 64, vocab_size=50261),
            special_tokens={"pad": 0, "eos": 1, "image": 2},
            mix=Mix(target=target, unit="tokens", realized=target),
            epochs={"caption": 1.0, "interleaved": 1.0, "text": 1.0},
            partitions=max(1, n // 10_000),
        )
        refs = sorted_tables(shards, max(1, n // 100), header.partitions)
        publish_manifest(str(out / "dataset"), header, refs, None)
        done("manifest", t)
    return {
        "timings": timings,
        "edges": n_edges,
        "removed": n_removed,
        "plan_partitions": parts,
        "driver_rss": rss,
    }


def tier_b(sizes: list[int], work: Path) -> None:
    rows = []
    for n in sizes:
        out = work / f"global-{n}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        res = run_child(["global", str(n), str(out)])
        rows.append((n, res))
        print(
            f"tier B {n}: {sum(res['timings'].values()):.0f} s; driver RSS after each: {res['driver_rss']}",
            file=sys.stderr,
        )
        shutil.rmtree(out, ignore_errors=True)
    print_table("B", rows, ["plan+pack", "dedup components", "rejects", "manifest"])


# --- throughput per core vs the peer composition ----------------------------------------------------


def child_throughput(data: Path, out: Path) -> dict:
    """mm1data's whole build on caption pairs (378² output)."""
    import dataclasses

    from mm1data.build import run_build
    from mm1data.config import RayConfig, Recipe, from_dict

    recipe = from_dict(
        Recipe,
        {
            "sources": {"captions": [{"path": str(data / "pairs.parquet"), "format": "parquet"}]},
            "build": {"mix": "caption=1"},
        },
    )
    stats = run_build(dataclasses.replace(recipe, ray=RayConfig(num_cpus=2)), str(out), restart=True)
    return {"wall_s": stats["wall_s"], "images": stats["totals"]["images"], "timings": stats["timings_s"]}


def peers(data: Path, out: Path) -> dict[str, float]:
    """The composition a user runs instead, one core, same data: seconds per step."""
    import io
    import tarfile

    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(data / "pairs.parquet")
    images, captions = table.column("image").to_pylist(), table.column("caption").to_pylist()
    t = time.perf_counter()
    with tarfile.open(out / "peer.tar", "w") as tar:
        for i, data_ in enumerate(images):
            with Image.open(io.BytesIO(data_)) as im:
                im.draft("RGB", (378, 378))
                im = im.convert("RGB")
                s = 378 / min(im.size)
                im = im.resize((max(378, round(im.width * s)), max(378, round(im.height * s))), Image.BICUBIC)
                left, top = (im.width - 378) // 2, (im.height - 378) // 2
                im = im.crop((left, top, left + 378, top + 378))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=90)
            for name, payload in ((f"{i:09d}.jpg", buf.getvalue()), (f"{i:09d}.txt", captions[i].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    out_ = {"img2dataset-style resize+tar": time.perf_counter() - t}
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter
        from filters import bundled_language_filter

        filters = [
            bundled_language_filter(),
            GopherQualityFilter(min_doc_words=2),
            C4QualityFilter(min_num_sentences=-1),
        ]
        docs = [Document(text=c, id=str(i)) for i, c in enumerate(captions)]
        t = time.perf_counter()
        for d in docs:
            for f in filters:
                r = f.filter(d)
                if r is False or (isinstance(r, tuple) and not r[0]):
                    break
        out_["datatrove filters"] = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - the peer is optional: say so in the table
        out_["datatrove filters"] = float("nan")
        print(f"datatrove unavailable ({type(e).__name__}: {e}); pip install -e '.[bench]'", file=sys.stderr)
    from datasketch import MinHash

    t = time.perf_counter()
    for c in captions:
        m = MinHash(num_perm=128)
        words = c.lower().split()
        m.update_batch([" ".join(words[i : i + 5]).encode() for i in range(max(1, len(words) - 4))])
    out_["datasketch MinHash"] = time.perf_counter() - t
    return out_


def throughput(n: int, work: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from growth_data import make_image, sentence_pool

    data = work / f"pairs-{n}"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "pairs.parquet").exists():
        rng, pool = np.random.default_rng(7), sentence_pool()
        import random

        r = random.Random(7)
        rows = [
            {"id": f"p{i}", "image": _photo_like(rng), "caption": " ".join(r.choice(pool).split()[:14])}
            for i in range(n)
        ]
        pq.write_table(pa.Table.from_pylist(rows), data / "pairs.parquet", row_group_size=256)
        del make_image
    res = run_child(["throughput", str(data), str(work / f"pairs-out-{n}")])
    cores = 2
    mm = res["images"] / (res["wall_s"] * cores)
    peer = peers(data, work)
    peer_total = sum(v for v in peer.values() if v == v)
    print(f"\nthroughput: {n} caption pairs, ~640x480 JPEG in, 378² out, {cores} cores")
    print("| what | seconds | images/s/core |")
    print("|---|---:|---:|")
    print(
        f"| mm1data build (ingest, filter, dedup, tokenize, pack, write), {cores} cores "
        f"| {res['wall_s']:.1f} | {mm:.1f} |"
    )
    for k, v in peer.items():
        print(f"| peer, 1 core: {k} | {v:.1f} | {n / v if v == v and v else float('nan'):.1f} |")
    per = n / peer_total
    print(f"| peer composition, 1 core (sum of the above) | {peer_total:.1f} | {per:.1f} |")
    print(f"mm1data / peer composition per core: {mm / per:.2f}x; mm1data phases: {res['timings']}")


def _photo_like(rng) -> bytes:
    """A 640×480 JPEG with photo-like detail (a smooth field plus texture), about 60–90 KB."""
    import io

    import numpy as np
    from PIL import Image

    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB").resize(
        (640, 480), Image.BICUBIC
    )
    arr = np.clip(np.asarray(base, np.int16) + rng.integers(-40, 41, (480, 640, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr, "RGB").save(out, "JPEG", quality=85)
    return out.getvalue()


# --- printing -------------------------------------------------------------------------------------------


def print_table(tier: str, rows: list[tuple[int, dict]], phases: list[str]) -> None:
    sizes = [n for n, _ in rows]
    print(f"\ntier {tier}")
    print(
        "| rows | "
        + " | ".join(phases)
        + " | total s | driver peak MiB (anon) | largest worker MiB | spill MiB |"
    )
    print("|---:|" + "---:|" * (len(phases) + 4))
    for n, r in rows:
        t = r["timings"]
        cells = " | ".join(f"{t.get(p, 0):.1f}" for p in phases)
        total = r.get("wall_s", sum(t.get(p, 0) for p in phases))
        print(
            f"| {n:,} | {cells} | {total:.1f} | {r['driver_mib']:.0f} ({r.get('driver_anon_mib', 0):.0f}) "
            f"| {r['worker_mib']:.0f} "
            f"| {r['spill_mib']:.0f} |"
        )
    slopes = {p: slope(sizes, [r["timings"].get(p, 0) for _, r in rows]) for p in phases}
    print("| log-log slope | " + " | ".join(f"{slopes[p]:.2f}" for p in phases) + " | | | | |")
    d = [r["driver_mib"] for _, r in rows]
    w = [r["worker_mib"] for _, r in rows]
    print("largest worker: " + ", ".join(f"{n:,}: {r.get('worker_cmd', '')}" for n, r in rows))
    for n, r in rows:
        top = "; ".join(f"{mib:.0f} {cmd}" for mib, cmd in r.get("top_workers", []))
        print(f"  largest workers at {n:,} (MiB, task): {top}")
    ok = (
        max(d) <= 600 and d[-1] <= 1.10 * d[0],
        max(w) <= 2048 and w[-1] <= 1.20 * w[0],
        all(s <= 1.1 for s in slopes.values() if s == s),
    )
    print(
        f"criteria: driver <= 600 MiB and +10 %: {ok[0]} ({d[0]:.0f} → {d[-1]:.0f}); "
        f"worker <= 2 GiB and +20 %: {ok[1]} ({w[0]:.0f} → {w[-1]:.0f}); slope <= 1.1: {ok[2]}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tier", choices=["A", "B"], action="append", default=[])
    ap.add_argument("--sizes", default=None, help="comma-separated record / row counts")
    ap.add_argument("--throughput", type=int, default=0, help="caption pairs for the per-core comparison")
    ap.add_argument("--work", default=None, help="folder for generated data (kept between runs)")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        if kind == "build":
            res = child_build(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]))
        elif kind == "global":
            res = child_global(int(rest[0]), Path(rest[1]))
        else:
            res = child_throughput(Path(rest[0]), Path(rest[1]))
        print(json.dumps(res))
        return
    work = Path(args.work or Path(tempfile.gettempdir()) / "mm1data-growth")
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} cores; work folder {work}")
    for tier in args.tier:
        default = "10000,30000,100000" if tier == "A" else "100000,1000000,10000000"
        sizes = [int(x) for x in (args.sizes or default).split(",")]
        (tier_a if tier == "A" else tier_b)(sizes, work)
    if args.throughput:
        throughput(args.throughput, work)


if __name__ == "__main__":
    main()
