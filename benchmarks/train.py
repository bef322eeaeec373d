"""Trainer and loader throughput, with a plain ``webdataset`` loop over the same tars as the peer.

    python benchmarks/train.py [--data DIR] [--sequences N] [--steps 4] [--rounds 3] [--loader-only]

Without ``--data`` it writes MM1-shaped shards (4,096-token sequences, 378² JPEGs, 144 image
tokens, ≤ 16 images) from the shared real data with the trainer tests' contract writer. Prints:

1. the loader alone, in one process (per core): packed sequences/s and images/s of mm1data's
   random-access loader vs ``webdataset.WebDataset(...).decode("rgb8").batched(8, ...)`` reading
   the same tars and doing the same work (decoded uint8 RGB images and the four int arrays as
   batched tensors, checked equal to mm1data's on one micro-batch); plus, as a labelled reference,
   the bare webdataset decode loop (no batching);
2. ``tiny`` training tokens/s and MFU against this CPU's measured fp32 matmul peak;
3. the arithmetic for "the loader feeds ≥ 10× what one H100 consumes at mm1-1b".
"""

from __future__ import annotations

import argparse
import atexit
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "train"))

from mm1data.config import TrainConfig  # noqa: E402
from mm1data.train.data import PackedBatches, ShardReader, collate, make_loader, open_dataset  # noqa: E402
from mm1data.train.model import MM1, model_config  # noqa: E402
from mm1data.train.train import batch_stats, train  # noqa: E402

H100_BF16_DENSE = 989e12
ASSUMED_MFU = 0.40
BATCH = 8  # sequences per micro-batch, both loaders


def mm1data_loader(data: str, n: int) -> tuple[float, int]:
    """Seconds to read n sequences through mm1data's loader (one process) and the images they held."""
    ds = open_dataset(data)
    batches = PackedBatches(ds, global_batch=BATCH, micro_batch=BATCH, steps=n // BATCH)
    t0, images = time.perf_counter(), 0
    for mb in make_loader(batches, workers=0):
        images += mb["images"].shape[0]
    return time.perf_counter() - t0, images


def webdataset_collate(samples: list[dict], streams: tuple[str, ...], size: int) -> dict:
    """The micro-batch the trainer takes (as mm1data's ``collate`` builds it) from webdataset samples."""
    T = len(samples[0]["tokens.npy"])
    stream_ids = np.full((len(samples), T), -1, dtype=np.int8)
    image_index = []
    for b, s in enumerate(samples):
        for ex in s["json"]["examples"]:
            stream_ids[b, ex["span"][0] : ex["span"][1]] = streams.index(ex["stream"])
        image_index += [b * T + im["slot_start"] for im in s["json"]["images"]]
    images = [s[k] for s in samples for k in sorted(s) if k.endswith(".jpg")]
    return {
        "tokens": torch.from_numpy(np.stack([s["tokens.npy"] for s in samples], dtype=np.int64)),
        "segment_ids": torch.from_numpy(np.stack([s["segment_ids.npy"] for s in samples])),
        "positions": torch.from_numpy(np.stack([s["positions.npy"] for s in samples])),
        "loss_mask": torch.from_numpy(np.stack([s["loss_mask.npy"] for s in samples])),
        "stream_ids": torch.from_numpy(stream_ids),
        "images": torch.from_numpy(np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)),
        "image_index": torch.tensor(image_index, dtype=torch.int64),
        "keys": [s["__key__"] for s in samples],
    }


def webdataset_batches(data: str, n: int) -> tuple[float, int]:
    """Seconds for a plain webdataset loop doing the loader's work: decode (npy, json, jpg → uint8 RGB)
    and batch into the tensors the trainer takes (:func:`webdataset_collate`)."""
    import webdataset as wds

    ds = open_dataset(data)
    collate = functools.partial(webdataset_collate, streams=ds.streams, size=ds.image_size)
    pipeline = (
        wds.WebDataset([s.url for s in ds.shards], shardshuffle=False)
        .decode("rgb8")
        .batched(BATCH, collation_fn=collate, partial=False)
    )
    t0, images = time.perf_counter(), 0
    for i, mb in enumerate(pipeline):
        images += mb["images"].shape[0]
        if i + 1 == n // BATCH:
            break
    return time.perf_counter() - t0, images


def check_equal_work(data: str) -> None:
    """Both loaders build the same tensors from the same sequences (the first micro-batch of shard 0)."""
    import webdataset as wds

    ds = open_dataset(data)
    collate_wds = functools.partial(webdataset_collate, streams=ds.streams, size=ds.image_size)
    pipeline = wds.WebDataset(ds.shards[0].url, shardshuffle=False).decode("rgb8")
    theirs = next(iter(pipeline.batched(BATCH, collation_fn=collate_wds)))
    reader = ShardReader(ds)
    ours = collate([reader.read(0, i) for i in range(BATCH)], ds.streams, ds.image_size)
    for k, v in ours.items():
        assert k == "keys" or torch.equal(v, theirs[k]), k


def webdataset_decode_only(data: str, n: int) -> tuple[float, int]:
    """Seconds for a bare webdataset loop that only decodes samples (no batches, no tensors): a reference."""
    import webdataset as wds

    urls = [s.url for s in open_dataset(data).shards]
    t0, images, seen = time.perf_counter(), 0, 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        images += sum(k.endswith(".jpg") for k in sample)
        seen += 1
        if seen == n:
            break
    return time.perf_counter() - t0, images


def best_of(rounds: int, loaders: dict, data: str, n: int) -> dict[str, tuple[float, int]]:
    """Each loader's fastest of ``rounds`` runs, the loaders taking turns (the machine is shared)."""
    for run in loaders.values():
        run(data, BATCH)  # warm: page cache, imports
    best: dict[str, tuple[float, int]] = {}
    for _ in range(rounds):
        for name, run in loaders.items():
            t, images = run(data, n)
            if name not in best or t < best[name][0]:
                best[name] = (t, images)
    return best


def cpu_peak_flops(threads: int) -> float:
    """This CPU's fp32 matmul FLOP/s with ``threads`` threads (the MFU denominator here)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    t0, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    return 2 * 1024**3 * reps / (time.perf_counter() - t0)


def h100_arithmetic(data: str) -> tuple[float, float, float]:
    """(FLOPs per sequence at mm1-1b, sequences/s one H100 consumes at 40 % MFU, images per sequence)."""
    ds = open_dataset(data)
    mb = next(iter(make_loader(PackedBatches(ds, global_batch=8, micro_batch=8, steps=1), workers=0)))
    targets, _, _, images, _, slots, seg_sq = batch_stats(mb, ds.image_tokens).tolist()
    with torch.device("meta"):
        model = MM1(
            model_config(
                "mm1-1b", vocab_size=ds.vocab_size, image_size=ds.image_size, image_tokens=ds.image_tokens
            )
        )
    per_seq = model.flops(int(targets), int(slots), int(seg_sq), int(images), True) / 8
    return per_seq, ASSUMED_MFU * H100_BF16_DENSE / per_seq, images / 8


def main() -> None:
    """Run the three measurements and print them as one table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="packed dataset; default: write MM1-shaped shards from the shared data")
    ap.add_argument("--sequences", type=int, default=0, help="sequences each loader reads (0: one epoch)")
    ap.add_argument("--steps", type=int, default=4, help="training steps per preset")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per loader (the best one counts)")
    ap.add_argument("--loader-only", action="store_true", help="skip the training measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = args.data
    if data is None:
        from shards_helper import write_packed_dataset

        scratch = Path(tempfile.mkdtemp(prefix="mm1data-bench-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        out = scratch / "ds"
        write_packed_dataset(
            out,
            REPO.parent / "shared" / "data-candidates",
            seq_len=4096,
            image_size=378,
            image_tokens=144,
            max_images=16,
            n_shards=2,
            seqs_per_shard=32,
        )
        data = str(out)
    n = args.sequences or open_dataset(data).sequences // BATCH * BATCH  # all read the same sequences
    check_equal_work(data)
    loaders = {"mm1data": mm1data_loader, "wds": webdataset_batches, "wds-bare": webdataset_decode_only}
    best = best_of(args.rounds, loaders, data, n)
    (t_ours, img_ours), (t_wds, img_wds), (t_bare, img_bare) = (best[k] for k in loaders)
    assert img_ours > 0
    if n == open_dataset(data).sequences:  # a whole epoch: every loader decoded every image once
        assert img_ours == img_wds == img_bare, (img_ours, img_wds, img_bare)

    if not args.loader_only:
        peak = cpu_peak_flops(1)
        cfg = TrainConfig(
            data=data,
            model="tiny",
            steps=args.steps + 1,
            batch_size=1,
            num_workers=0,
            log_every=0,
            print_every=0,
            peak_tflops=peak / 1e12,
        )
        recs = train(cfg)[1:]  # the first step warms up
        tok_s = np.mean([(r["text_tokens_per_s"] + r["image_tokens_per_s"]) for r in recs])
        mfu = np.mean([r["mfu"] for r in recs])

    per_seq, h100_seq_s, img_per_seq = h100_arithmetic(data)
    ours_seq_s = n / t_ours
    print(f"data: {data} (seq_len 4096, 378² images, {img_per_seq:.1f} images/sequence)")
    print(f"loaders: best of {args.rounds} alternating runs of {n} sequences in micro-batches of {BATCH}")
    print("| what | mm1data | webdataset loop | ratio |")
    print("|---|---|---|---|")
    print(
        f"| loader, 1 core: sequences/s (decode + batch into tensors) | {ours_seq_s:.1f} | {n / t_wds:.1f} "
        f"| {t_wds / t_ours:.2f}× |"
    )
    print(
        f"| loader, 1 core: images/s (decode + batch into tensors) | {img_ours / t_ours:.0f} "
        f"| {img_wds / t_wds:.0f} | {t_wds / t_ours:.2f}× |"
    )
    print(
        f"| reference: webdataset decode only, no batching: sequences/s | | {n / t_bare:.1f} "
        f"| {t_bare / t_ours:.2f}× |"
    )
    if not args.loader_only:
        print(f"| train tiny, 1 thread: tokens/s | {tok_s:,.0f} | | |")
        print(f"| train tiny: MFU vs measured fp32 matmul peak ({peak / 1e9:.0f} GFLOP/s) | {mfu:.1%} | | |")
    print(
        f"mm1-1b: {per_seq / 1e12:.1f} TFLOP per sequence (ViT-L + C-Abstractor + LM, attention per segment);"
    )
    print(f"  one H100 at {ASSUMED_MFU:.0%} MFU of 989 TFLOP/s consumes {h100_seq_s:.2f} sequences/s;")
    print(
        f"  10× that is {10 * h100_seq_s:.1f} sequences/s = "
        f"{10 * h100_seq_s / ours_seq_s:.1f} loader cores at the rate above."
    )
    print("MFU on GPU: not measured (no GPU on this machine).")


if __name__ == "__main__":
    main()
