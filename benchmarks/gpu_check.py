"""Prove the fast training path on one CUDA GPU, in about five minutes, as one table.

    python benchmarks/gpu_check.py [--data DIR] [--steps 6] [--workers N] [--no-compile]

1. Attention equality, same weights and batch (``tiny`` with a wide init, so that the logits are
   spread and any leak between examples shows), default-shaped sequences (4,096 tokens, 378²):
   per-segment SDPA vs the dense-mask reference (float32), FlexAttention vs per-segment SDPA
   (float32 and bf16 autocast). Each compares the token-mean loss, every target's cross-entropy and
   the gradients; a control (a mask that lets examples see each other) must move the losses far
   beyond the tolerance, so the check can tell. Tolerances: ``FP32`` and ``BF16`` below.
2. ``mm1data train`` itself at mm1-1b shapes (or the largest preset and micro-batch that fit),
   eager and with ``--compile``: step-1 loss equal within the bf16 tolerance, tokens/s, TFLOP/s,
   MFU against the device's dense bf16 peak, the trainer's data wait, peak GPU memory.
3. The loader at the same time: a second loader with the same workers drained while the GPU steps
   run, its sequences/s next to the sequences/s the GPU consumes (loader- or compute-bound).

Exits 1 if an equality check fails. On a machine without a CUDA GPU it says so and exits 0
without measuring or claiming anything. The float32 checks of (1) on CPU run in the tests
(``tests/train/test_gpu_check.py``), through the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "train"))

from mm1data.config import TrainConfig  # noqa: E402
from mm1data.train.data import (  # noqa: E402
    PackedBatches,
    PackedDataset,
    ShardReader,
    collate,
    make_loader,
    open_dataset,
)
from mm1data.train.model import MM1, model_config, next_token_losses  # noqa: E402
from mm1data.train.train import device_peak_tflops, to_device, train  # noqa: E402


@dataclass(frozen=True)
class Tolerance:
    """How far two attention paths may differ: token-mean loss (absolute), the largest per-target
    cross-entropy difference (absolute, nats), and the gradients' relative L2 distance."""

    loss: float
    ce: float
    grad: float


# float32: summation order only (measured on CPU, segments vs dense at 4,096 tokens: loss 0,
# largest per-target 4e-6, gradients 7e-7)
FP32 = Tolerance(loss=1e-5, ce=1e-4, grad=1e-4)
# bf16 autocast: 8 mantissa bits (relative rounding 2^-8 ≈ 0.4 % per element), re-rounded at every
# layer, so single targets can move by a tenth of a nat while the mean over thousands stays close
BF16 = Tolerance(loss=2e-2, ce=0.5, grad=5e-2)
CONTROL_FACTOR = 10  # a leaking mask must move the largest per-target difference this far past `ce`


@dataclass(frozen=True)
class Check:
    """One line of the table: a measured value against its limit (``above``: it must exceed it)."""

    what: str
    value: float
    limit: float
    above: bool = False

    @property
    def ok(self) -> bool:
        """Whether the value is on the right side of the limit."""
        return self.value > self.limit if self.above else self.value <= self.limit


def run_attention(
    model: MM1, batch: dict[str, Any], kind: str, *, dtype: torch.dtype | None = None, leak: bool = False
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Per-target cross-entropy, token-mean loss and flat gradients of one forward + backward with
    attention ``kind``. ``leak``: attention sees the whole row (examples leak into each other)
    while the targets stay those of the real examples: the control."""
    model.cfg = dataclasses.replace(model.cfg, attention=kind)
    model.zero_grad(set_to_none=True)
    seg = batch["segment_ids"]
    attend_ids = (seg > 0).to(seg.dtype) if leak else seg
    device = batch["tokens"].device.type
    ctx = torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()
    with ctx:
        h = model.embed(batch["tokens"], batch["images"], batch["image_index"])
        out = next_token_losses(model, model.hidden(h, batch["positions"], attend_ids), batch)
    n = max(1, out["ce"].numel())
    (out["loss"] / n).backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return out["ce"].float(), float(out["ce_sum"]) / n, grads


def compare_attention(
    model: MM1, batch: dict[str, Any], a: str, b: str, tol: Tolerance, dtype: torch.dtype | None = None
) -> list[Check]:
    """Checks that attention paths ``a`` and ``b`` agree on one batch (loss, every target, gradients),
    and that a mask leaking across examples would not: the control."""
    ce_a, loss_a, g_a = run_attention(model, batch, a, dtype=dtype)
    ce_b, loss_b, g_b = run_attention(model, batch, b, dtype=dtype)
    ce_leak, _, _ = run_attention(model, batch, a, dtype=dtype, leak=True)
    label = f"{a} vs {b}, {'float32' if dtype is None else str(dtype).removeprefix('torch.')}"
    return [
        Check(f"{label}: token-mean loss |Δ| (loss {loss_a:.4f})", abs(loss_a - loss_b), tol.loss),
        Check(f"{label}: largest per-target CE |Δ| ({ce_a.numel()} targets)", _max_diff(ce_a, ce_b), tol.ce),
        Check(f"{label}: gradients ‖Δ‖/‖g‖", float((g_a - g_b).norm() / g_a.norm()), tol.grad),
        Check(
            f"{label}: control, a mask crossing examples moves a target's CE by",
            _max_diff(ce_a, ce_leak),
            CONTROL_FACTOR * tol.ce,
            above=True,
        ),
    ]


def _max_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).abs().max()) if x.numel() else 0.0


def check_model(ds: PackedDataset, device: torch.device) -> MM1:
    """``tiny`` with a wide init (0.2): logits far from uniform, so a leak changes them visibly."""
    torch.manual_seed(0)
    cfg = model_config(
        "tiny",
        {"init_std": 0.2},
        vocab_size=ds.vocab_size,
        image_size=ds.image_size,
        image_tokens=ds.image_tokens,
    )
    return MM1(cfg).to(device)


def check_batch(ds: PackedDataset, size: int, device: torch.device) -> dict[str, Any]:
    """The first ``size`` sequences of shard 0 as one micro-batch on ``device``."""
    reader = ShardReader(ds)
    n = min(size, ds.shards[0].sequences)
    return to_device(collate([reader.read(0, i) for i in range(n)], ds.streams, ds.image_size), device)


def equality_checks(ds: PackedDataset, device: torch.device, batch_size: int = 2) -> list[Check]:
    """(1): per-segment vs dense in float32; on CUDA also FlexAttention vs per-segment (float32, bf16)."""
    model, batch = check_model(ds, device), check_batch(ds, batch_size, device)
    checks = compare_attention(model, batch, "segments", "dense", FP32)
    if device.type == "cuda":
        checks += compare_attention(model, batch, "flex", "segments", FP32)
        checks += compare_attention(model, batch, "flex", "segments", BF16, dtype=torch.bfloat16)
    return checks


# ---------------------------------------------------------------- (2) and (3): the trainer at scale


class LoaderMeter:
    """Drains a loader like the trainer's (same workers) in a thread while the GPU steps run."""

    def __init__(self, ds: PackedDataset, micro_batch: int, workers: int) -> None:
        batches = PackedBatches(ds, global_batch=micro_batch, micro_batch=micro_batch, seed=1, steps=10**9)
        self.loader, self.sequences, self.seconds = make_loader(batches, workers), 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def _drain(self) -> None:
        t0 = time.perf_counter()
        for mb in self.loader:
            self.sequences += len(mb["keys"])
            self.seconds = time.perf_counter() - t0
            if self._stop.is_set():
                break

    def __enter__(self) -> LoaderMeter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def rate(self) -> float:
        """Sequences per second delivered so far."""
        return self.sequences / self.seconds if self.seconds else 0.0


def run_trainer(data: str, preset: str, micro: int, steps: int, workers: int, compiled: bool) -> dict:
    """``train`` for ``steps`` steps of one micro-batch; medians over the steps after the first two."""
    cfg = TrainConfig(
        data=data,
        model=preset,
        steps=steps,
        batch_size=micro,
        micro_batch_size=micro,
        compile=compiled,
        num_workers=workers,
        log_every=0,
        print_every=0,
    )
    torch.cuda.reset_peak_memory_stats()
    with LoaderMeter(open_dataset(data), micro, workers) as meter:
        records = train(cfg)
    timed = records[2:] or records[-1:]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in timed)

    return {
        "loss": records[0]["loss"],
        "step_s": median("step_s"),
        "tokens_s": statistics.median(r["text_tokens_per_s"] + r["image_tokens_per_s"] for r in timed),
        "tflops": median("tflops_per_device"),
        "mfu": median("mfu") if timed[0]["mfu"] is not None else None,
        "data_wait_s": median("data_wait_s"),
        "demand_seq_s": micro / median("step_s"),
        "supply_seq_s": meter.rate,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def fitting_run(data: str, steps: int, workers: int, compiled: bool, start: tuple[str, int] | None) -> tuple:
    """The largest (preset, micro-batch) that fits, tried from mm1-1b × 8 down; its results."""
    tries = [("mm1-1b", m) for m in (8, 4, 2, 1)] + [("mm1-100m", m) for m in (8, 4, 2, 1)]
    if start is not None:
        tries = tries[tries.index(start) :]
    for preset, micro in tries:
        try:
            return preset, micro, run_trainer(data, preset, micro, steps, workers, compiled)
        except torch.OutOfMemoryError:
            pass
        gc.collect()
        torch.cuda.empty_cache()
    raise SystemExit("gpu_check: not even mm1-100m with one sequence fits on this GPU")


def default_data() -> str:
    """Default-shaped shards (4,096 tokens, 378², ≤ 16 images) from the shared real data."""
    from shards_helper import write_default_shaped

    out = Path(tempfile.mkdtemp(prefix="mm1data-gpu-check-"))
    shared = Path(os.environ.get("MM1DATA_SHARED_DATA", REPO.parent / "shared" / "data-candidates"))
    write_default_shaped(out / "ds", shared)
    return str(out / "ds")


def print_table(checks: list[Check], runs: dict[str, tuple], peak: float | None, gpu: str) -> None:
    """Everything as one markdown table."""
    print(f"gpu_check on {gpu} ({torch.cuda.device_count()} visible), torch {torch.__version__}")
    print("| check or measure | value | limit | result |")
    print("|---|---|---|---|")
    for c in checks:
        sign = ">" if c.above else "≤"
        print(f"| {c.what} | {c.value:.3g} | {sign} {c.limit:.3g} | {'pass' if c.ok else 'FAIL'} |")
    for name, (preset, micro, r) in runs.items():
        lead = f"{preset}, micro-batch {micro} × 4096, {name}"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (unknown peak)"
        print(f"| {lead}: s/step | {r['step_s']:.3f} | | |")
        print(f"| {lead}: tokens/s | {r['tokens_s']:,.0f} | | |")
        print(f"| {lead}: TFLOP/s, MFU vs {peak or '?'} TFLOP/s dense bf16 | {r['tflops']:.1f}, {mfu} | | |")
        print(f"| {lead}: trainer's data wait per step (s) | {r['data_wait_s']:.3f} | | |")
        bound = "compute-bound" if r["supply_seq_s"] > r["demand_seq_s"] else "LOADER-BOUND"
        print(
            f"| {lead}: loader supply vs GPU demand (sequences/s) | {r['supply_seq_s']:.1f} vs "
            f"{r['demand_seq_s']:.1f} | | {bound} |"
        )
        print(f"| {lead}: peak GPU memory (GiB) | {r['peak_gib']:.1f} | | |")


def main() -> int:
    """Run the checks on the GPU; 0 when all equalities hold (or when there is no GPU), 1 otherwise."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="packed dataset; default: default-shaped shards from the shared data")
    ap.add_argument("--steps", type=int, default=6, help="trainer steps per run (the first two warm up)")
    ap.add_argument("--workers", type=int, default=0, help="loader processes (0: CPU cores / 2, at most 8)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine: nothing measured, nothing claimed.")
        return 0
    t0 = time.perf_counter()
    data = args.data or default_data()
    workers = args.workers or max(1, min(8, (os.cpu_count() or 2) // 2))
    device = torch.device("cuda", 0)
    ds = open_dataset(data)
    checks = equality_checks(ds, device)
    runs = {"eager": fitting_run(data, args.steps, workers, False, None)}
    if not args.no_compile:
        preset, micro, _ = runs["eager"]
        runs["torch.compile"] = fitting_run(data, args.steps, workers, True, (preset, micro))
        eager, compiled = runs["eager"][2], runs["torch.compile"][2]
        if runs["torch.compile"][:2] == runs["eager"][:2]:
            checks.append(
                Check(
                    "torch.compile vs eager: step-1 loss |Δ| (bf16)",
                    abs(eager["loss"] - compiled["loss"]),
                    BF16.loss,
                )
            )
    print_table(checks, runs, device_peak_tflops(device), torch.cuda.get_device_name(device))
    print(f"{time.perf_counter() - t0:.0f} s in all; {workers} loader workers.")
    if not args.data:
        shutil.rmtree(Path(data).parent, ignore_errors=True)
    failed = [c.what for c in checks if not c.ok]
    if failed:
        print("FAILED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
