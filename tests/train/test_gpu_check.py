"""benchmarks/gpu_check.py: its equality checks hold on CPU and have teeth; with no GPU it claims nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mm1data.train.data import open_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def test_segment_attention_equals_the_dense_reference(gpu_check: ModuleType, packed_dataset: Path) -> None:
    checks = gpu_check.equality_checks(open_dataset(str(packed_dataset)), torch.device("cpu"), batch_size=4)
    assert [c.ok for c in checks] == [True] * 4, [(c.what, c.value, c.limit) for c in checks]
    loss, ce, grads, control = checks
    assert loss.limit == 1e-5 and ce.limit == 1e-4 and grads.limit == 1e-4
    assert control.above and control.value > 1.0  # a leak moves a target's loss by nats, not by 1e-4


def test_the_checks_fail_when_the_paths_differ(gpu_check: ModuleType, packed_dataset: Path) -> None:
    ds = open_dataset(str(packed_dataset))
    model = gpu_check.check_model(ds, torch.device("cpu"))
    batch = gpu_check.check_batch(ds, 4, torch.device("cpu"))
    real = gpu_check.run_attention

    def leaky_b(model, batch, kind, **kw):  # noqa: ANN001, ANN202 - path "dense" leaks across examples
        return real(model, batch, "segments", leak=kind == "dense" or kw.pop("leak", False), **kw)

    gpu_check.run_attention = leaky_b
    try:
        checks = gpu_check.compare_attention(model, batch, "segments", "dense", gpu_check.FP32)
    finally:
        gpu_check.run_attention = real
    assert not checks[1].ok and not checks[2].ok


def test_without_a_gpu_it_says_so_and_claims_nothing() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: benchmarks/gpu_check.py measures instead")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "gpu_check: no CUDA GPU on this machine: nothing measured, nothing claimed."
