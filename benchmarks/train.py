"""CPU training (today's T×T path vs per-segment attention) and loader throughput, side by side.

    python benchmarks/train.py [--data DIR] [--batch-size 8] [--steps 2] [--threads 1] [--rounds 3]
                               [--loader-only | --train-only]

Without ``--data`` it writes MM1-shaped shards (4,096-token sequences, 378² JPEGs, 144 image
tokens, ≤ 16 images) from the shared real data with the trainer tests' contract writer. Prints:

1. ``mm1data train --model tiny`` (the README example's shapes and batch) on two paths, each in its
   own process so each has its own peak RSS: *today's* (SDPA under a dense [B, 1, T, T] mask and
   every logit at once through autograd, ``--set attention=dense --set loss_chunk=0``) and *now*
   (per-segment SDPA, fused chunked cross-entropy: the defaults). Seconds per step (wall, after a
   warm-up step), peak RSS, the loss of the first step (same weights, same batch: it must agree),
   and where one step's compute goes (CPU seconds of forward + backward of each part);
2. JPEG decoders on the shards' images, each writing into a batch slot: Pillow (today's loader),
   simplejpeg (the loader now), PyTurboJPEG (when the system's libturbojpeg is there);
3. the loader alone, in one process (per core): mm1data now vs today's loader (the same loader
   with the Pillow decode) vs ``webdataset.WebDataset(...).decode("rgb8").batched(8, ...)`` doing
   the same work (checked equal on one micro-batch), plus the bare webdataset decode loop;
4. the arithmetic for "the loader feeds ≥ 10× what one H100 consumes at mm1-1b".

Decoders and loaders are single-threaded and timed in CPU seconds of their process
(``process_time``), so a figure is "per core" even when other jobs share the machine; training
steps are timed on the wall clock, and their parts in CPU seconds.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import io
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "train"))

import mm1data.train.data as train_data  # noqa: E402
from mm1data.config import TrainConfig  # noqa: E402
from mm1data.train.data import PackedBatches, ShardReader, collate, make_loader, open_dataset  # noqa: E402
from mm1data.train.model import MM1, model_config, next_token_losses  # noqa: E402
from mm1data.train.train import batch_stats, train  # noqa: E402

H100_BF16_DENSE = 989e12
ASSUMED_MFU = 0.40
BATCH = 8  # sequences per micro-batch, all loaders
PATHS = {  # model overrides of the two training paths
    "today": {"attention": "dense", "loss_chunk": 0},
    "now": {},
}


# ---------------------------------------------------------------- 1. training, one process per path


def train_child(data: str, path: str, batch: int, steps: int, threads: int) -> dict:
    """Run in a fresh process: ``steps`` timed steps after one warm-up, peak RSS, one step's parts."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(
        data=data,
        model="tiny",
        model_overrides=PATHS[path],
        steps=steps + 1,
        batch_size=batch,
        num_workers=0,
        log_every=0,
        print_every=0,
    )
    records = train(cfg)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # where one step's compute goes: forward + backward of each part on the first micro-batch
    ds = open_dataset(data)
    reader = ShardReader(ds)
    samples = [reader.read(0, i % ds.shards[0].sequences) for i in range(batch)]
    mb = collate(samples, ds.streams, ds.image_size)
    torch.manual_seed(0)
    model = MM1(
        model_config(
            "tiny",
            PATHS[path],
            vocab_size=ds.vocab_size,
            image_size=ds.image_size,
            image_tokens=ds.image_tokens,
        )
    )
    parts: dict[str, float] = {}

    def cpu(name: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        t0 = time.process_time()
        out = fn()
        parts[name] = parts.get(name, 0.0) + time.process_time() - t0
        return out

    feats = cpu("vision", lambda: model.connector(model.vision(mb["images"])))
    cpu("vision", lambda: feats.sum().backward())
    h = model.embed(mb["tokens"], mb["images"][:0], mb["image_index"][:0]).detach().requires_grad_()
    hidden = cpu("blocks", lambda: model.hidden(h, mb["positions"], mb["segment_ids"]))
    head_in = hidden.detach().requires_grad_()
    out = cpu("head", lambda: next_token_losses(model, head_in, mb))
    cpu("head", lambda: out["loss"].backward())
    cpu("blocks", lambda: hidden.backward(head_in.grad))
    return {
        "step_s": statistics.median(r["step_s"] for r in records[1:]),
        "cpu_s": statistics.median(r["cpu_s"] for r in records[1:]),
        "data_s": statistics.median(r["data_wait_s"] for r in records[1:]),
        "loss": records[0]["loss"],
        "targets": records[0]["targets"],
        "peak_rss": peak_rss,
        "parts": parts,
    }


def run_child(data: str, path: str, args: argparse.Namespace) -> dict:
    """:func:`train_child` in a new Python process (its own peak RSS), its JSON result."""
    cmd = [sys.executable, __file__, "--child", path, "--data", data, "--batch-size", str(args.batch_size)]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{path} path failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_training(today: dict, now: dict, args: argparse.Namespace, seq_len: int) -> None:
    """The before/after table of ``mm1data train --model tiny``."""
    gib = 2**30

    def row(what: str, a: float, b: float, fmt: str) -> None:
        print(f"| {what} | {a:{fmt}} | {b:{fmt}} | {a / b:.1f}× |")

    print(
        f"mm1data train --model tiny, batch {args.batch_size} × {seq_len} tokens, {args.threads} thread(s), "
        f"median of {args.steps} steps after a warm-up, each path in its own process"
    )
    print("| what | today: dense T×T mask, all logits | now: per-segment SDPA, chunked CE | today / now |")
    print("|---|---|---|---|")
    row("seconds per step (wall)", today["step_s"], now["step_s"], ".2f")
    row("CPU seconds per step (the training process)", today["cpu_s"], now["cpu_s"], ".2f")
    row("peak RSS (GiB)", today["peak_rss"] / gib, now["peak_rss"] / gib, ".2f")
    names = {
        "vision": "ViT + connector",
        "blocks": "LM blocks (attention)",
        "head": "loss head (50,261-way softmax)",
    }
    for key, name in names.items():
        row(f"one step, CPU s fwd+bwd: {name}", today["parts"][key], now["parts"][key], ".2f")
    row("one step, CPU s fwd+bwd: total", sum(today["parts"].values()), sum(now["parts"].values()), ".2f")
    same = abs(today["loss"] - now["loss"]) <= 1e-5 * max(1.0, abs(today["loss"]))
    print(
        f"| loss of step 1 ({today['targets']} targets) | {today['loss']:.6f} | {now['loss']:.6f} "
        f"| {'equal to 1e-5' if same else 'DIFFERENT'} |"
    )


# ---------------------------------------------------------------- 2. JPEG decoders


def pillow_decode_into(data: bytes | memoryview, out: np.ndarray) -> None:
    """Today's loader's decode (Pillow), kept here as the baseline: decode, pack to RGB, copy into ``out``."""
    with Image.open(io.BytesIO(data)) as im:
        if im.size != (out.shape[1], out.shape[0]):
            raise ValueError(f"image is {im.width}x{im.height}, expected {out.shape[1]}x{out.shape[0]}")
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        out.reshape(-1)[:] = np.frombuffer(rgb.tobytes(), np.uint8)


def turbojpeg_decoder() -> Callable[[bytes, np.ndarray], None] | str:
    """PyTurboJPEG's decode into ``out``, or why it is not available here."""
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        tj = TurboJPEG()
    except Exception as e:  # noqa: BLE001 - any reason (module or system library missing) is reported
        return f"not available ({type(e).__name__}: {str(e).splitlines()[0][:60]})"

    def decode(data: bytes, out: np.ndarray) -> None:
        out[...] = tj.decode(data, pixel_format=TJPF_RGB)

    return decode


def decoders() -> dict[str, Callable | str]:
    """The decoders compared, by label (a string: not available, and why)."""
    return {
        "Pillow (today's loader)": pillow_decode_into,
        "simplejpeg (the loader now)": train_data.decode_jpeg_into,
        "PyTurboJPEG 1.x": turbojpeg_decoder(),
    }


def time_decoders(data: str, rounds: int, limit: int = 400) -> dict[str, tuple[float, bool] | str]:
    """Best seconds per image of each decoder over the dataset's first ``limit`` JPEGs (alternating
    rounds), and whether it gives Pillow's pixels exactly."""
    ds = open_dataset(data)
    reader = ShardReader(ds)
    samples = (reader.read(s, i) for s in range(len(ds.shards)) for i in range(ds.shards[s].sequences))
    jpegs = [bytes(j) for sample in samples for j in sample["jpegs"]][:limit]
    out = np.empty((len(jpegs), ds.image_size, ds.image_size, 3), np.uint8)
    ref = out.copy()
    for j, o in zip(jpegs, ref, strict=True):
        pillow_decode_into(j, o)
    found = decoders()
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in found.items():
            if isinstance(fn, str):
                continue
            t0 = time.process_time()
            for j, o in zip(jpegs, out, strict=True):
                fn(j, o)
            best[name] = min(best.get(name, float("inf")), (time.process_time() - t0) / len(jpegs))
    result: dict[str, tuple[float, bool] | str] = {}
    for name, fn in found.items():
        if isinstance(fn, str):
            result[name] = fn
            continue
        for j, o in zip(jpegs, out, strict=True):
            fn(j, o)
        result[name] = (best[name], bool(np.array_equal(out, ref)))
    return result


def print_decoders(results: dict[str, tuple[float, bool] | str], rounds: int) -> None:
    """The decoder table."""
    base = results["Pillow (today's loader)"][0]
    print(f"JPEG decoders, CPU time of 1 core, best of {rounds} alternating rounds, into a batch slot")
    print("| decoder | ms / image | images/s | vs Pillow | same pixels as Pillow |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        if isinstance(r, str):
            print(f"| {name} | {r} | | | |")
        else:
            same = "yes" if r[1] else "no"
            print(f"| {name} | {r[0] * 1e3:.3f} | {1 / r[0]:.0f} | {base / r[0]:.2f}× | {same} |")


# ---------------------------------------------------------------- 3. the loader, per core


@contextlib.contextmanager
def decoding_with(fn: Callable[[bytes | memoryview, np.ndarray], None]) -> Iterator[None]:
    """The loader with another JPEG decode in place of its own (today's loader = the Pillow decode)."""
    own = train_data.decode_jpeg_into
    train_data.decode_jpeg_into = fn
    try:
        yield
    finally:
        train_data.decode_jpeg_into = own


def mm1data_loader(data: str, n: int) -> tuple[float, int]:
    """Seconds to read n sequences through mm1data's loader (one process) and the images they held."""
    ds = open_dataset(data)
    batches = PackedBatches(ds, global_batch=BATCH, micro_batch=BATCH, steps=n // BATCH)
    t0, images = time.process_time(), 0
    for mb in make_loader(batches, workers=0):
        images += mb["images"].shape[0]
    return time.process_time() - t0, images


def today_loader(data: str, n: int) -> tuple[float, int]:
    """:func:`mm1data_loader` with today's (Pillow) decode."""
    with decoding_with(pillow_decode_into):
        return mm1data_loader(data, n)


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
    collate_wds = functools.partial(webdataset_collate, streams=ds.streams, size=ds.image_size)
    pipeline = (
        wds.WebDataset([s.url for s in ds.shards], shardshuffle=False)
        .decode("rgb8")
        .batched(BATCH, collation_fn=collate_wds, partial=False)
    )
    t0, images = time.process_time(), 0
    for i, mb in enumerate(pipeline):
        images += mb["images"].shape[0]
        if i + 1 == n // BATCH:
            break
    return time.process_time() - t0, images


def webdataset_decode_only(data: str, n: int) -> tuple[float, int]:
    """Seconds for a bare webdataset loop that only decodes samples (no batches, no tensors): a reference."""
    import webdataset as wds

    urls = [s.url for s in open_dataset(data).shards]
    t0, images, seen = time.process_time(), 0, 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        images += sum(k.endswith(".jpg") for k in sample)
        seen += 1
        if seen == n:
            break
    return time.process_time() - t0, images


def check_equal_work(data: str) -> None:
    """All loaders build the same tensors from the same sequences (the first micro-batch of shard 0)."""
    import webdataset as wds

    ds = open_dataset(data)
    collate_wds = functools.partial(webdataset_collate, streams=ds.streams, size=ds.image_size)
    pipeline = wds.WebDataset(ds.shards[0].url, shardshuffle=False).decode("rgb8")
    theirs = next(iter(pipeline.batched(BATCH, collation_fn=collate_wds)))
    reader = ShardReader(ds)
    ours = collate([reader.read(0, i) for i in range(BATCH)], ds.streams, ds.image_size)
    with decoding_with(pillow_decode_into):
        today = collate([reader.read(0, i) for i in range(BATCH)], ds.streams, ds.image_size)
    for k, v in ours.items():
        assert k == "keys" or (torch.equal(v, theirs[k]) and torch.equal(v, today[k])), k


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


def time_index(data: str, rounds: int) -> tuple[float, float, int]:
    """CPU seconds per tar member to index the shards: the header walk, ``tarfile``; the member count."""
    urls = [s.url for s in open_dataset(data).shards]
    walked = [train_data.index_tar(u) for u in urls]
    assert walked == [train_data.index_tar_with_tarfile(u) for u in urls]
    members = sum(len(m) for index in walked for _, m in index)
    best: dict[Callable, float] = {}
    for _ in range(rounds):
        for fn in (train_data.index_tar, train_data.index_tar_with_tarfile):
            t0 = time.process_time()
            for u in urls:
                fn(u)
            best[fn] = min(best.get(fn, float("inf")), time.process_time() - t0)
    return best[train_data.index_tar] / members, best[train_data.index_tar_with_tarfile] / members, members


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


def print_loaders(best: dict[str, tuple[float, int]], n: int, rounds: int, data: str) -> None:
    """The loader table and the H100 arithmetic."""
    (t_now, img_now), (t_today, img_today), (t_wds, img_wds), (t_bare, _) = (
        best[k] for k in ("now", "today", "wds", "wds-bare")
    )
    per_seq, h100_seq_s, img_per_seq = h100_arithmetic(data)
    print(f"loaders: CPU time, best of {rounds} alternating runs of {n} sequences, micro-batches of {BATCH}")
    print("| loader, 1 core (decode + batch into tensors) | mm1data now | today's loader | webdataset loop "
          "| now / today | now / webdataset |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print(
        f"| sequences/s | {n / t_now:.1f} | {n / t_today:.1f} | {n / t_wds:.1f} | {t_today / t_now:.2f}× "
        f"| {t_wds / t_now:.2f}× |"
    )
    print(
        f"| images/s | {img_now / t_now:.0f} | {img_today / t_today:.0f} | {img_wds / t_wds:.0f} "
        f"| {t_today / t_now:.2f}× | {t_wds / t_now:.2f}× |"
    )
    print(f"| reference: webdataset decode only, no batching: sequences/s | | | {n / t_bare:.1f} | | |")
    print(
        f"| H100s at mm1-1b one loader core feeds (one needs {h100_seq_s:.2f} sequences/s) "
        f"| {n / t_now / h100_seq_s:.1f} | {n / t_today / h100_seq_s:.1f} "
        f"| {n / t_wds / h100_seq_s:.1f} | | |"
    )
    print(
        f"mm1-1b: {per_seq / 1e12:.1f} TFLOP per sequence ({img_per_seq:.1f} images; ViT-L + C-Abstractor "
        f"+ LM, attention per segment); one H100 at {ASSUMED_MFU:.0%} MFU of 989 TFLOP/s consumes "
        f"{h100_seq_s:.2f} sequences/s; 10× that is {10 * h100_seq_s:.1f} sequences/s = "
        f"{10 * h100_seq_s * t_now / n:.2f} loader cores at mm1data's rate above "
        f"({10 * h100_seq_s * t_today / n:.2f} at today's)."
    )


# ---------------------------------------------------------------- main


def default_data() -> str:
    """MM1-shaped shards from the shared real data (removed at exit)."""
    from shards_helper import write_default_shaped

    scratch = Path(tempfile.mkdtemp(prefix="mm1data-bench-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    write_default_shaped(scratch / "ds", REPO.parent / "shared" / "data-candidates")
    return str(scratch / "ds")


def main() -> None:
    """Run the measurements and print their tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="packed dataset; default: write MM1-shaped shards from the shared data")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch (the README example's: 8)")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per path, after a warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training processes")
    ap.add_argument("--sequences", type=int, default=0, help="sequences each loader reads (0: one epoch)")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per loader (the best one counts)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--loader-only", action="store_true", help="skip the training measurement")
    only.add_argument("--train-only", action="store_true", help="skip the decoder and loader measurements")
    ap.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = args.data or default_data()
    if args.child:
        print(json.dumps(train_child(data, args.child, args.batch_size, args.steps, args.threads)))
        return
    ds = open_dataset(data)
    print(f"data: {data} (seq_len {ds.seq_len}, {ds.image_size}² images, {ds.sequences} sequences)")
    if not args.loader_only:
        today, now = (run_child(data, path, args) for path in ("today", "now"))
        print_training(today, now, args, ds.seq_len)
    if not args.train_only:
        n = args.sequences or ds.sequences // BATCH * BATCH  # all loaders read the same sequences
        check_equal_work(data)
        print_decoders(time_decoders(data, args.rounds), args.rounds)
        loaders = {
            "now": mm1data_loader,
            "today": today_loader,
            "wds": webdataset_batches,
            "wds-bare": webdataset_decode_only,
        }
        best = best_of(args.rounds, loaders, data, n)
        if n == ds.sequences:  # a whole epoch: every loader decoded every image once
            assert len({best[k][1] for k in loaders}) == 1, {k: best[k][1] for k in loaders}
        print_loaders(best, n, args.rounds, data)
        walk, with_tarfile, members = time_index(data, args.rounds)
        print(
            f"shard index (every loader worker indexes every shard it reads), {members} members: "
            f"header walk {walk * 1e6:.1f} µs/member, tarfile {with_tarfile * 1e6:.1f} µs/member "
            f"({with_tarfile / walk:.1f}×)"
        )
    print("GPU: not measured here; see benchmarks/gpu_check.py.")


if __name__ == "__main__":
    main()
