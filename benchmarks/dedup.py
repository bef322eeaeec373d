"""MinHash near-duplicate text: mm1data vs datatrove's 4-stage MinHash vs datasketch bulk, one core.

Corpus: the 697 Dolma CC docs scaled to ``--docs`` distinct docs (copy k of a doc has its words
shuffled by a seed k, so copies keep the length and vocabulary of real pages but share no
5-grams), plus planted near-duplicates: for ``--pairs`` docs a variant with a fraction of words
replaced, spread so the pairs' true word-5-gram Jaccard covers 0.70-1.00. Every tool sees the
same docs; recall is the share of planted pairs it puts in one cluster, by true-Jaccard band.

- mm1data: its index and group steps (signatures, LSH bands, bucket pairs confirmed by estimated
  Jaccard ≥ 0.7, union-find), the same functions the Ray job runs, in this process.
- datatrove: MinhashDedupSignature → MinhashDedupBuckets → MinhashDedupCluster → MinhashDedupFilter
  (default MinhashConfig: 5-grams, 14 buckets × 8 hashes), LocalPipelineExecutor, 1 task, 1 worker.
- datasketch: ``MinHash.generator`` (num_perm 128) over word-5-gram shingles, ``MinHashLSH``
  (threshold 0.8) insert + query.

    python benchmarks/dedup.py [--docs 20000] [--pairs 1200]

Needs the ``bench`` extra (``pip install -e .[bench]``: datatrove).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MM1DATA_SHARED_DATA", REPO.parent / "shared" / "data-candidates"))
BANDS = [(0.95, 1.01), (0.90, 0.95), (0.85, 0.90), (0.80, 0.85), (0.75, 0.80), (0.70, 0.75)]


def corpus(n_docs: int, n_pairs: int, seed: int = 0):
    """(ids, texts, planted pairs [(i, j, true Jaccard)])."""
    from mm1data.dedup.minhash import true_jaccard

    path = next((DATA / "c-text").glob("dolma-CC-*.jsonl.gz"))
    with gzip.open(path, "rt") as f:
        base = [d["text"] for d in map(json.loads, f) if len(d["text"].split()) >= 60]
    rng = random.Random(seed)
    texts = []
    for k in range(n_docs):
        words = base[k % len(base)].split()
        if k >= len(base):
            random.Random(k).shuffle(words)
        texts.append(" ".join(words))
    planted = []
    for _ in range(n_pairs):
        i = rng.randrange(n_docs)
        frac = rng.uniform(0.002, 0.065)
        words = texts[i].split()
        for w in rng.sample(range(len(words)), max(1, round(len(words) * frac))):
            words[w] = f"x{rng.randrange(10**9)}"
        texts.append(" ".join(words))
        planted.append((i, len(texts) - 1, true_jaccard(texts[i], texts[-1])))
    return [f"d{k:07d}" for k in range(len(texts))], texts, planted


def run_mm1data(ids, texts, batch: int = 1024):
    from mm1data.config import DedupConfig
    from mm1data.dedup.components import resolve
    from mm1data.dedup.phases import bucket_pairs, index_batch
    from mm1data.schemas import TEXT_DOC

    cfg = DedupConfig(exact_text=False, exact_image=False, image_hash=False)
    t0 = time.perf_counter()
    parts = []
    for s in range(0, len(texts), batch):
        rows_ = [{"id": i, "text": t} for i, t in zip(ids[s : s + batch], texts[s : s + batch], strict=True)]
        table = pa.Table.from_pylist(rows_, schema=TEXT_DOC)
        parts.append(index_batch(table, "text", cfg))
    rows = pa.concat_tables(parts)
    keys = rows.column("key").to_numpy()
    uniq, counts = np.unique(keys, return_counts=True)
    shared = rows.filter(pa.compute.is_in(rows.column("key"), value_set=pa.array(uniq[counts > 1])))
    out = bucket_pairs(shared, cfg)
    edges = list(zip(*(out.column(c).to_pylist() for c in ("a", "b", "sim")), strict=True))
    removed = resolve(sorted(set(edges)), {})
    seconds = time.perf_counter() - t0
    cluster = {m.split(":", 1)[1]: keep.split(":", 1)[1] for m, (keep, _) in removed.items()}
    return seconds, lambda x: cluster.get(x, x)


def run_datasketch(ids, texts):
    from datasketch import MinHash, MinHashLSH

    from mm1data.dedup.minhash import split_normalized

    t0 = time.perf_counter()
    words = split_normalized(texts).to_pylist()
    shingles = [{" ".join(w[k : k + 5]).encode() for k in range(max(len(w) - 4, 1))} for w in words]
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    mhs = list(MinHash.generator(shingles, num_perm=128))
    for i, m in zip(ids, mhs, strict=True):
        lsh.insert(i, m)
    parent = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for i, m in zip(ids, mhs, strict=True):
        for j in lsh.query(m):
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return time.perf_counter() - t0, find


def run_datatrove(ids, texts):
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )

    cfg = MinhashConfig()
    tmp = Path(tempfile.mkdtemp(prefix="dt-minhash-"))
    docs = lambda: [Document(text=t, id=i) for i, t in zip(ids, texts, strict=True)]  # noqa: E731
    t0 = time.perf_counter()
    stages = [
        [docs(), MinhashDedupSignature(output_folder=str(tmp / "sigs"), config=cfg)],
        [MinhashDedupBuckets(input_folder=str(tmp / "sigs"), output_folder=str(tmp / "buckets"), config=cfg)],
        [
            MinhashDedupCluster(
                input_folder=str(tmp / "buckets"),
                output_folder=str(tmp / "remove"),
                config=cfg,
                save_cluster_id=True,
            )
        ],
        [docs(), MinhashDedupFilter(input_folder=str(tmp / "remove"))],
    ]
    for k, pipeline in enumerate(stages):
        tasks = cfg.num_buckets if k == 1 else 1
        LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(tmp / f"logs{k}"), skip_completed=False
        ).run()
    seconds = time.perf_counter() - t0
    # stage 3 wrote (doc index, cluster id) for every doc in a cluster (one input file: rank 0)
    raw = (tmp / "remove" / "000000.clusters").read_bytes()
    pairs = np.frombuffer(raw, dtype="<u4").reshape(-1, 2)
    cluster = {ids[int(d)]: int(c) for d, c in pairs}
    return seconds, lambda x: cluster.get(x, x)


def recall_by_band(planted, ids, same):
    out = []
    for lo, hi in BANDS:
        ps = [(i, j) for i, j, jac in planted if lo <= jac < hi]
        hit = sum(same(ids[i]) == same(ids[j]) for i, j in ps)
        out.append((hit, len(ps)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--pairs", type=int, default=1_200)
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args()
    import logging

    logging.disable(logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ids, texts, planted = corpus(args.docs, args.pairs)
    n = len(texts)
    print(
        f"corpus: {n} docs ({args.docs} distinct + {args.pairs} planted near-duplicates), "
        f"{sum(map(len, texts)) / 1e6:.1f} M chars, 1 process, 1 core"
    )
    results = {}
    results["mm1data (32x4 LSH, confirm est. J>=0.7)"] = run_mm1data(ids, texts)
    results["datasketch bulk (LSH threshold 0.8)"] = run_datasketch(ids, texts)
    if not args.skip_datatrove:
        from loguru import logger

        logger.remove()
        results["datatrove 4-stage (14x8)"] = run_datatrove(ids, texts)
    head = f"{'tool':<42}{'seconds':>8}{'docs/s':>9}{'docs/s/core':>13}   recall by true Jaccard band"
    print(head)
    bands = "  ".join(f"{lo:.2f}-{min(hi, 1.0):.2f}" for lo, hi in BANDS)
    print(f"{'':<72}   {bands}")
    for name, (sec, same) in results.items():
        rec = recall_by_band(planted, ids, same)
        cells = "  ".join(f"{h / t:>9.1%}" if t else f"{'-':>9}" for h, t in rec)
        print(f"{name:<42}{sec:>8.1f}{n / sec:>9.0f}{n / sec:>13.0f}   {cells}")
    print("pairs per band: " + ", ".join(f"{t}" for _, t in recall_by_band(planted, ids, lambda x: x)))
    mm = next(iter(results.values()))[0]
    for name, (sec, _) in list(results.items())[1:]:
        print(f"ratio mm1data / {name.split(' ')[0]} per core: {sec / mm:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
