"""Default-shaped batches (4,096 tokens, 378² images) train in bounded memory: nothing T×T is ever made.

Each run is a fresh process under ``RLIMIT_AS`` that trains ``tiny`` for two steps of one 4,096-token sequence
while a dispatch mode fails any op whose output holds T×T elements or more (a [B, 1, T, T] mask,
[B, H, T, T] scores). The dense reference path must trip it: the guard has teeth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from shards_helper import write_default_shaped

SEQ_LEN = 4096
CAP = 2 * 2**30  # address space of the training process: the goal for peak RSS

CHILD = r"""
import json, resource, sys

cap, data, overrides, T = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mm1data.config import TrainConfig
from mm1data.train.train import train


class NoSquare(TorchDispatchMode):
    # fails an op whose output's storage holds T×T elements or more; remembers the largest
    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                n = t.untyped_storage().nbytes() // t.element_size()
                if n >= T * T:
                    raise MemoryError(f"T×T: {func} made a tensor of {n} elements, shape {tuple(t.shape)}")
                self.largest = max(self.largest, n)
        return out


torch.set_num_threads(1)
cfg = TrainConfig(data=data, model="tiny", steps=2, batch_size=1, num_workers=0, log_every=0,
                  print_every=0, model_overrides=overrides)
with NoSquare() as guard:
    records = train(cfg)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"loss": [r["loss"] for r in records], "largest": guard.largest, "peak_rss": rss}))
"""


@pytest.fixture(scope="module")
def default_shaped(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Two packed sequences in the default build's shapes: 4,096 tokens, 378² JPEGs, ≤ 16 images."""
    out = tmp_path_factory.mktemp("default-shaped")
    return write_default_shaped(out, shared_data, n_shards=1, seqs_per_shard=2)


def _train_capped(data: Path, overrides: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", CHILD, str(CAP), str(data), json.dumps(overrides), str(SEQ_LEN)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_default_shaped_batches_train_under_a_memory_cap_without_t_by_t(default_shaped: Path) -> None:
    proc = _train_capped(default_shaped, {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["loss"]) == 2 and all(10.0 < x < 11.5 for x in result["loss"])  # ≈ ln 50,261 at init
    assert result["largest"] < SEQ_LEN * SEQ_LEN
    assert result["peak_rss"] < CAP


def test_the_dense_mask_reference_trips_the_guard(default_shaped: Path) -> None:
    proc = _train_capped(default_shaped, {"attention": "dense"})
    assert proc.returncode != 0
    assert "T×T" in proc.stderr and "4096, 4096)" in proc.stderr, proc.stderr[-3000:]
