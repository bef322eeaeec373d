"""Tokenize + pack + write throughput and packing fill: mm1data vs naive packers, one process.

Data: the real shared set, **scaled** by repetition (each copy gets a unique id, so nothing is
deduplicated away; :data:`COPIES` copies per ``--scale``): COCO-mini caption pairs (159 images),
the 107 MMC4 documents with COCO images standing in for their (absent) pictures, and the 697
Dolma CC web documents. Records come through mm1data's own ingest readers, so the rows are what a
build renders.

Per core: examples and tokens per CPU-second of this process (``time.process_time``, all its
threads), so the figures hold on a busy shared machine where wall time does not. Steps: tokenize
(render, with each image re-encoded to a 378² JPEG), plan (mix 45:45:10 + pack, metadata only),
write (assemble arrays and tars). Packing quality on the same selected examples: mm1data's plan
vs a naive first-fit in arrival order and vs one example per padded sequence, as fill (non-pad /
all tokens), sequences, and share of the attainable bound (what the 16-image cap allows).

    python benchmarks/pack.py [--scale 1] [--seq-len 4096] [--upsample]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MM1DATA_SHARED_DATA", REPO.parent / "shared" / "data-candidates"))


COPIES = {"caption": 12, "interleaved": 2, "text": 1}
"""Copies per unit of ``--scale``: caption pairs are the scarce stream of the shared set (159
images), so they are repeated most, to make a 45:45:10 mix use a sizeable part of the rest."""


def read_rows(stream: str, spec, cfg) -> list[dict]:
    """Kept rows of one source through mm1data's ingest readers."""
    from mm1data.ingest import plan, read_unit
    from mm1data.stages import live_mask

    rows = []
    for unit in plan(stream, spec):
        for table in read_unit(unit, cfg):
            rows += table.filter(pa.array(live_mask(table))).to_pylist()
    return rows


def load(scale: int, tmp: Path) -> dict[str, list[dict]]:
    """Caption, interleaved and text rows from the shared data, repeated ``scale`` times."""
    from mm1data.config import IngestConfig, SourceSpec

    cfg = IngestConfig()
    coco = DATA / "a-coco-mini"
    captions = read_rows(
        "caption",
        SourceSpec(str(coco / "annotations/captions_val2017.json"), "coco", str(coco / "val2017")),
        cfg,
    ) + read_rows(
        "caption",
        SourceSpec(str(coco / "annotations/captions_train2017.json"), "coco", str(coco / "train2017")),
        cfg,
    )
    mmc4 = DATA / "b-interleaved/mmc4_docs_no_face_shard_151_v3.partial.jsonl"
    stand_ins = sorted((coco / "val2017").glob("*.jpg")) + sorted((coco / "train2017").glob("*.jpg"))
    images = tmp / "mmc4-images"
    images.mkdir()
    k = 0
    for line in mmc4.read_text().splitlines():
        for info in json.loads(line)["image_info"]:
            shutil.copyfile(stand_ins[k % len(stand_ins)], images / info["image_name"])
            k += 1
    interleaved = read_rows("interleaved", SourceSpec(str(mmc4), "mmc4", str(images)), cfg)
    dolma = next((DATA / "c-text").glob("dolma-CC-*.jsonl.gz"))
    text = read_rows("text", SourceSpec(str(dolma), "auto", name="dolma-cc"), cfg)
    out = {}
    for stream, rows in (("caption", captions), ("interleaved", interleaved), ("text", text)):
        out[stream] = [{**r, "id": f"{r['id']}~{c}"} for c in range(COPIES[stream] * scale) for r in rows]
    return out


def tokenize(rows: dict[str, list[dict]], cfg) -> tuple[pa.Table, float]:
    """Render every row (one process); returns the examples and the seconds it took."""
    from mm1data.tokens.render import Renderer

    renderer = Renderer(cfg)
    parts = []
    t0 = time.process_time()
    for stream, rs in rows.items():
        for lo in range(0, len(rs), 256):
            parts.append(renderer(pa.Table.from_pylist(rs[lo : lo + 256]), stream))
    table = pa.concat_tables(parts)
    table = table.filter(pa.compute.is_null(table.column("reason")))
    return table, time.process_time() - t0


def main() -> None:
    """Run the benchmark and print the tables."""
    from mm1data import pack as _  # noqa: F401
    from mm1data.config import BuildConfig
    from mm1data.pack.packer import attainable_fill, fill, first_fit, one_per_sequence
    from mm1data.pack.plan import plan_build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=4, help="copies of the shared data (labelled as scaled)")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--mix", default="45:45:10")
    ap.add_argument("--upsample", action="store_true", help="repeat short streams instead of cutting")
    args = ap.parse_args()
    cfg = BuildConfig(seq_len=args.seq_len, mix=args.mix, shard_size=1000, upsample=args.upsample)
    with tempfile.TemporaryDirectory() as tmp:
        rows = load(args.scale, Path(tmp))
        n_records = {s: len(r) for s, r in rows.items()}
        examples, t_tok = tokenize(rows, cfg)
        streams = np.array(examples.column("stream").to_pylist(), dtype=object)
        tokens = np.array(examples.column("n_tokens").to_pylist(), dtype=np.int64)
        images = np.array(examples.column("n_images").to_pylist(), dtype=np.int64)
        t0 = time.process_time()
        plan = plan_build(streams, tokens, images, cfg)
        t_plan = time.process_time() - t0
        used = np.array([i for s in plan.shards for q in s for i in q], dtype=np.int64)
        write_s = write_shards(examples, plan, cfg, Path(tmp) / "out")

    n_ex, n_tok = len(tokens), int(tokens.sum())
    print(f"data: shared set, SCALED by repetition (copies {COPIES} × {args.scale}): records {n_records}")
    print(f"examples rendered: {n_ex}  tokens: {n_tok}  images: {int(images.sum())}  (seq_len {cfg.seq_len})")
    print()
    print(f"{'step (per core)':<34}{'CPU s':>9}{'examples/s':>12}{'tokens/s':>12}")
    steps = [
        ("tokenize (+ JPEG 378² re-encode)", t_tok, n_ex, n_tok),
        ("plan: mix + pack (metadata)", t_plan, len(used), int(tokens[used].sum())),
    ]
    steps.append(("write tars", write_s, len(used), int(tokens[used].sum())))
    # end to end: every placement (repeats included) costs its share of tokenizing once
    per_example_tok = t_tok / n_ex
    total = per_example_tok * len(np.unique(used)) + t_plan + write_s
    steps.append(("tokenize + pack + write", total, len(used), int(tokens[used].sum())))
    for name, secs, ex, tok in steps:
        print(f"{name:<34}{secs:>9.2f}{ex / secs:>12.0f}{tok / secs:>12.0f}")
    print()
    t, k = tokens[used], images[used]
    bound = attainable_fill(t, k, cfg.seq_len, cfg.max_images)
    print(f"packing the {len(used)} example uses the {cfg.mix} mix selected (attainable bound {bound:.2%}):")
    print(f"{'packer':<34}{'sequences':>10}{'fill':>9}{'of bound':>10}")
    rows_out = [
        ("mm1data (plan_build)", plan.sequences, plan.fill),
        ("naive first-fit, arrival order", None, None),
        ("one example per sequence", None, None),
    ]
    ff = first_fit(t, k, cfg.seq_len, cfg.max_images)
    one = one_per_sequence(t, k, cfg.seq_len, cfg.max_images)
    rows_out[1] = (rows_out[1][0], len(ff), fill(t, ff, cfg.seq_len))
    rows_out[2] = (rows_out[2][0], len(one), fill(t, one, cfg.seq_len))
    for name, n, f in rows_out:
        print(f"{name:<34}{n:>10}{f:>9.2%}{f / bound:>10.1%}")
    print(f"realized mix {json.dumps({g: round(v, 4) for g, v in plan.realized.items()})}", end="  ")
    print(f"epochs {json.dumps(plan.epochs)}")


def write_shards(examples: pa.Table, plan, cfg, out: Path) -> float:
    """Write the planned shards with mm1data's shard writer in this process; returns the seconds."""
    from mm1data.shards.format import sample_key, shard_name
    from mm1data.shards.writer import assemble, put_shard, tar_bytes
    from mm1data.tokens.render import load_tokenizer

    pad = load_tokenizer(cfg.tokenizer).ids["pad"]
    rows = examples.to_pylist()
    for r in rows:
        r["slot_len"] = cfg.image_tokens
    out.mkdir(parents=True)
    t0 = time.process_time()
    for k, shard in enumerate(plan.shards):
        samples = [
            (sample_key(0, k, j), assemble([rows[i] for i in seq], cfg.seq_len, pad))
            for j, seq in enumerate(shard)
        ]
        put_shard(str(out), shard_name(0, k), *tar_bytes(samples))
    return time.process_time() - t0


if __name__ == "__main__":
    main()
