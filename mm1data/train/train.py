"""The training loop, readable top to bottom: set up, build, (resume), loop, log, checkpoint.

One process per device under ``torchrun`` (DDP, or FSDP2 with ``fsdp``); gloo on CPU, NCCL on
CUDA; bf16 autocast on CUDA. The loss is the token mean of next-token cross-entropy over the
*global* batch: each rank divides its summed loss by the global target count (all-reduced before
the backward pass), so 1 process and N processes with the same global batch compute the same
gradient. The loader state is a global sequence cursor (see :mod:`mm1data.train.data`), so a
checkpoint resumes exactly, even with a different number of processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mm1data.config import TrainConfig, to_dict
from mm1data.errors import UsageError
from mm1data.train.data import PackedBatches, make_loader, open_dataset
from mm1data.train.model import MM1, load_vision_weights, model_config, target_mask

# Dense bf16 peak TFLOP/s per device, for the MFU estimate.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
CHECKPOINT = "latest.pt"


@dataclass(frozen=True)
class Env:
    """Where this process runs: its rank, the world size and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """True on rank 0, the process that logs and writes checkpoints."""
        return self.rank == 0


def init_distributed() -> Env:
    """Join the ``torchrun`` process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Env(rank, world, device)


def mm1_peak_lr(n_params: int) -> float:
    """MM1's fitted peak learning rate η = exp(−0.4214·ln N − 0.5535) (arXiv 2403.09611, §3.4)."""
    return math.exp(-0.4214 * math.log(n_params) - 0.5535)


def warmup_steps(cfg: TrainConfig) -> int:
    """Linear warmup length: ``cfg.warmup_steps``, capped at a tenth of the run for short runs."""
    return max(1, min(cfg.warmup_steps, cfg.steps // 10))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, lr: float, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (not on norms, biases, class token)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)


def parallelize(model: MM1, cfg: TrainConfig, env: Env) -> torch.nn.Module:
    """Compile blocks in place (names unchanged), then shard (FSDP2) or replicate (DDP) across ranks."""
    if cfg.compile:
        for block in [*model.layers, *model.vision.transformer.resblocks]:
            block.compile()
    if cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in [*model.layers, *model.vision.transformer.resblocks]:
            fully_shard(block)
        fully_shard(model)
        return model
    if env.world > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        # images are not in every micro-batch, so the vision tower is not always used
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    return model


def grad_sync(module: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if enabled else module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def save_checkpoint(
    cfg: TrainConfig,
    env: Env,
    model: MM1,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    cursor: int,
) -> None:
    """Write model, optimiser, scheduler, loader cursor and config to ``ckpt_dir/latest.pt`` atomically."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {
        "model": get_model_state_dict(model, options=opts),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=opts),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "cursor": cursor,
        "config": to_dict(cfg),
        "model_config": dataclasses.asdict(model.cfg),
    }
    if env.main:
        path = Path(cfg.ckpt_dir) / CHECKPOINT
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{CHECKPOINT}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
    if env.world > 1:
        dist.barrier()


def load_checkpoint(
    cfg: TrainConfig, model: MM1, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, int]:
    """Restore from ``ckpt_dir/latest.pt``; returns (step, cursor). (0, 0) when there is none yet."""
    path = Path(cfg.ckpt_dir or "") / CHECKPOINT
    if not cfg.ckpt_dir or not path.is_file():
        return 0, 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config"]["batch_size"] != cfg.batch_size:
        raise UsageError(
            f"{path}: trained with batch size {state['config']['batch_size']}, not {cfg.batch_size}"
        )
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=opts)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=opts)
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"]), int(state["cursor"])


def batch_stats(mb: dict[str, Any], image_tokens: int) -> torch.Tensor:
    """[targets, text tokens, image tokens, images, real tokens, slots, Σ segment length²] of a batch."""
    seg = mb["segment_ids"].long()
    B, T = seg.shape
    lengths = torch.bincount(
        (seg + torch.arange(B, device=seg.device)[:, None] * (T + 1)).flatten(), minlength=B * (T + 1)
    )
    lengths = lengths.view(B, T + 1)[:, 1:]  # drop padding (segment 0)
    images = mb["images"].shape[0]
    real = int((seg > 0).sum())
    targets = int(target_mask(mb["loss_mask"], mb["segment_ids"]).sum())
    sq = int((lengths.double() ** 2).sum())
    return torch.tensor(
        [targets, real - images * image_tokens, images * image_tokens, images, real, B * T, sq],
        dtype=torch.float64,
    )


def all_reduce(t: torch.Tensor, env: Env) -> torch.Tensor:
    """Sum across ranks (a no-op on one process)."""
    if env.world > 1:
        t = t.to(env.device if env.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
    return t.cpu()


def device_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known GPU, for MFU; None on CPU and unknown devices."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for gpu, tflops in PEAK_TFLOPS.items() if gpu in name), None)


def to_device(mb: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a micro-batch's tensors to ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in mb.items()}


def train(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Train as ``cfg`` says; returns the log records (rank 0 also prints them as JSON lines)."""
    if not cfg.data:
        raise UsageError("train: --data is required (a packed dataset folder or s3:// prefix)")
    env = init_distributed()
    ds = open_dataset(cfg.data)
    if cfg.batch_size % env.world:
        raise UsageError(f"batch size {cfg.batch_size} is not divisible by the {env.world} processes")
    micro = cfg.micro_batch_size or cfg.batch_size // env.world

    # --- model, optimiser, schedule (same seed on every rank → same initial weights)
    torch.manual_seed(cfg.seed)
    model_cfg = model_config(
        cfg.model,
        cfg.model_overrides,
        vocab_size=ds.vocab_size,
        image_size=ds.image_size,
        image_tokens=ds.image_tokens,
    )
    model = MM1(model_cfg)
    if cfg.vision_weights:
        load_vision_weights(model.vision, cfg.vision_weights)
    if cfg.freeze_vision:
        model.vision.requires_grad_(False)
    model.to(env.device)
    n_lm = model.lm_parameters()
    peak_lr = cfg.lr if cfg.lr is not None else mm1_peak_lr(n_lm)
    train_model = parallelize(model, cfg, env)
    optimizer = build_optimizer(model, peak_lr, cfg)
    warmup = warmup_steps(cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, cfg.steps, cfg.min_lr_ratio)
    )
    step, cursor = load_checkpoint(cfg, model, optimizer, scheduler) if cfg.resume else (0, 0)
    stop = min(cfg.steps, step + cfg.stop_after) if cfg.stop_after else cfg.steps

    # --- data: this rank's micro-batches from the global cursor on
    batches = PackedBatches(
        ds,
        global_batch=cfg.batch_size,
        micro_batch=micro,
        rank=env.rank,
        world=env.world,
        seed=cfg.seed,
        cursor=cursor,
        steps=max(0, stop - step),
    )
    loader = iter(make_loader(batches, cfg.num_workers, cfg.prefetch, pin_memory=env.device.type == "cuda"))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if env.device.type == "cuda"
        else contextlib.nullcontext()
    )
    peak = cfg.peak_tflops or device_peak_tflops(env.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    S = len(ds.streams)
    if env.main:
        print(
            f"train: {cfg.model} LM {n_lm / 1e6:.1f}M params, "
            f"total {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M, "
            f"peak lr {peak_lr:.3g}, warmup {warmup}, {env.world} process(es), "
            f"micro-batch {micro}×{batches.accum}, "
            f"steps {step}→{stop}",
            file=sys.stderr,
        )

    records: list[dict[str, Any]] = []
    while step < stop:
        t0, cpu0 = time.perf_counter(), time.process_time()
        micro_batches = [next(loader) for _ in range(batches.accum)]
        t_data = time.perf_counter() - t0
        stats = all_reduce(sum(batch_stats(mb, ds.image_tokens) for mb in micro_batches), env)
        n_targets = max(1.0, float(stats[0]))
        # ce, z, per-stream ce, per-stream count: summed on the device, read once per step
        sums = torch.zeros(2 + 2 * S, dtype=torch.float64, device=env.device)
        for i, mb in enumerate(micro_batches):
            mb = to_device(mb, env.device)
            with grad_sync(train_model, i == len(micro_batches) - 1):
                with autocast:
                    out = train_model(mb, z_loss=cfg.z_loss)
                (out["loss"] * (env.world / n_targets)).backward()
            keep = out["stream"] >= 0
            stream = out["stream"][keep].long()
            sums[0] += out["ce_sum"].detach()
            sums[1] += out["z_sum"].detach()
            sums[2 : 2 + S].index_add_(0, stream, out["ce"][keep].double())
            sums[2 + S :] += torch.bincount(stream, minlength=S)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        sums = all_reduce(sums, env)
        step += 1
        cursor += cfg.batch_size
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0

        targets, text, image, images, real, slots, seg_sq = stats.tolist()
        flops = model.flops(int(targets), int(slots), int(seg_sq), int(images), not cfg.freeze_vision)
        record = {
            "step": step,
            "loss": float(sums[0] / n_targets),
            "stream_loss": {
                s: float(sums[2 + j] / sums[2 + S + j])
                for j, s in enumerate(ds.streams)
                if sums[2 + S + j] > 0
            },
            "z_loss": cfg.z_loss * float(sums[1] / n_targets),
            "lr": lr,
            "grad_norm": float(grad_norm),
            "targets": int(targets),
            "text_tokens_per_s": text / dt,
            "image_tokens_per_s": image / dt,
            "images_per_s": images / dt,
            "fill": real / slots,
            "tflops_per_device": flops / dt / env.world / 1e12,
            "mfu": flops / dt / env.world / (peak * 1e12) if peak else None,
            "data_wait_s": t_data,
            "step_s": dt,
            "cpu_s": cpu,  # CPU seconds of this process in the step (all its threads; not loader workers)
            "cursor": cursor,
        }
        records.append(record)
        if env.main and cfg.log_every and step % cfg.log_every == 0:
            print(json.dumps(record), flush=True)
        if env.main and cfg.print_every and (step % cfg.print_every == 0 or step == stop):
            streams = " ".join(f"{k} {v:.3f}" for k, v in record["stream_loss"].items())
            mfu = f" mfu {record['mfu']:.1%}" if record["mfu"] is not None else ""
            print(
                f"step {step}/{cfg.steps} loss {record['loss']:.4f} ({streams}) lr {lr:.2e} "
                f"gnorm {record['grad_norm']:.2f} "
                f"{(text + image) / dt:,.0f} tok/s {images / dt:.1f} img/s fill {record['fill']:.0%}{mfu}",
                file=sys.stderr,
            )
        if cfg.ckpt_dir and ((cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == stop):
            save_checkpoint(cfg, env, model, optimizer, scheduler, step, cursor)
    return records
