"""The training loop: LR schedule, learning, bit-exact resume, 2 processes = 1 process, elastic resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mm1data.cli import main
from mm1data.config import TrainConfig
from mm1data.shards.format import read_manifest
from mm1data.train.train import lr_factor, mm1_peak_lr, train, warmup_steps


def _cfg(data: Path, **kw: object) -> TrainConfig:
    return TrainConfig(data=str(data), num_workers=0, log_every=0, print_every=0, **kw)


def test_mm1_lr_fit_gives_the_papers_rates() -> None:
    # MM1 quotes 6e-5 (3B), 4e-5 (7B), 2e-5 (30B); the formula gives 5.83e-5, 4.08e-5, 2.21e-5:
    # the paper's figures are these rounded to one significant digit.
    got = {n: mm1_peak_lr(int(n * 1e9)) for n in (3, 7, 30)}
    assert [f"{got[n]:.2e}" for n in (3, 7, 30)] == ["5.83e-05", "4.08e-05", "2.21e-05"]
    for n, quoted in ((3, 6e-5), (7, 4e-5), (30, 2e-5)):
        assert abs(got[n] - quoted) / quoted < 0.11


def test_lr_warms_up_linearly_then_decays_by_cosine_to_a_tenth() -> None:
    assert warmup_steps(TrainConfig(steps=100)) == 10 and warmup_steps(TrainConfig(steps=500_000)) == 2000
    f = [lr_factor(s, 10, 100, 0.1) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[10] == 1.0
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f[100] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def test_tiny_model_learns_in_100_steps_from_the_cli(packed_dataset: Path) -> None:
    args = [
        "train",
        "--data",
        str(packed_dataset),
        "--model",
        "tiny",
        "--steps",
        "100",
        "--batch-size",
        "1",
        "--num-workers",
        "0",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["step"] for r in records] == list(range(1, 101))
    start = sum(r["loss"] for r in records[:5]) / 5
    end = sum(r["loss"] for r in records[-10:]) / 10
    # measured: start 10.82 (≈ ln 50,261, the uniform guess), mean of the last 10 steps 7.17
    assert start == pytest.approx(math.log(50_261), abs=0.1)
    assert end < start - 3.0
    assert records[0]["lr"] == pytest.approx(mm1_peak_lr(3_315_328) / 10)
    assert set(records[-1]["stream_loss"]) <= {"caption", "text"} and records[-1]["fill"] > 0.5
    assert all(r["images_per_s"] >= 0 and r["mfu"] is None for r in records)  # no known peak on CPU


def test_resume_is_bit_exact(packed_dataset: Path, tmp_path: Path) -> None:
    straight = train(_cfg(packed_dataset, steps=20, batch_size=2, ckpt_dir=str(tmp_path / "a"), z_loss=1e-4))
    first = train(
        _cfg(packed_dataset, steps=20, batch_size=2, ckpt_dir=str(tmp_path / "b"), z_loss=1e-4, stop_after=10)
    )
    rest = train(
        _cfg(packed_dataset, steps=20, batch_size=2, ckpt_dir=str(tmp_path / "b"), z_loss=1e-4, resume=True)
    )
    assert [r["step"] for r in first + rest] == list(range(1, 21))
    for key in ("loss", "z_loss", "grad_norm", "lr", "cursor"):
        assert [r[key] for r in first + rest] == [r[key] for r in straight], key
    a = torch.load(tmp_path / "a" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "latest.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["cursor"] == b["cursor"] == 40 and a["step"] == 20


def test_two_processes_match_one_and_hand_over_to_one(packed_dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mm1data.cli",
        "train",
        "--data",
        str(packed_dataset),
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--ckpt-dir",
        str(ckpt),
        "--stop-after",
        "3",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["step"] for r in two] == [1, 2, 3]

    one = train(_cfg(packed_dataset, steps=6, batch_size=4))
    accumulated = train(_cfg(packed_dataset, steps=6, batch_size=4, micro_batch_size=1, stop_after=3))
    for a, b, c in zip(two, one, accumulated, strict=False):
        assert a["targets"] == b["targets"] == c["targets"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and c["loss"] == pytest.approx(
            b["loss"], rel=1e-5
        )
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)

    # the 2-process checkpoint, resumed by 1 process, reads exactly the sequences 12..23 of the order
    assert torch.load(ckpt / "latest.pt", weights_only=True)["cursor"] == 12
    rest = train(_cfg(packed_dataset, steps=6, batch_size=4, ckpt_dir=str(ckpt), resume=True))
    assert [r["cursor"] for r in rest] == [16, 20, 24]
    for a, b in zip(rest, one[3:], strict=True):
        assert a["targets"] == b["targets"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_train_usage_errors_are_one_line(tmp_path: Path, packed_dataset: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--steps", "1"])
    assert result.exit_code == 2 and "error: train: --data is required" in result.output
    result = runner.invoke(main, ["train", "--data", str(tmp_path), "--steps", "1"])
    assert result.exit_code == 2 and "no manifest.json" in result.output
    result = runner.invoke(main, ["train", "--data", str(packed_dataset), "--set", "widht=3"])
    assert result.exit_code == 2 and "unknown model field 'widht'" in result.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  stepz: 3\n")
    result = runner.invoke(main, ["train", "--config", str(recipe)])
    assert result.exit_code == 2 and "unknown key 'stepz'" in result.output


def test_trains_on_the_default_build_output(tmp_path: Path, ray_local) -> None:
    runner = CliRunner()
    built = runner.invoke(main, ["build", "--output", str(tmp_path / "out")])
    assert built.exit_code == 0, built.output
    result = runner.invoke(
        main,
        ["train", "--data", str(tmp_path / "out"), "--steps", "3", "--batch-size", "2", "--num-workers", "0"],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["step"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)
    mix = read_manifest(str(tmp_path / "out")).mix.target  # per-stream loss uses the mix's names
    assert all(set(r["stream_loss"]) <= set(mix) for r in records) and any(r["stream_loss"] for r in records)
