"""Fixtures of the trainer tests: one small packed dataset from real data, single-threaded torch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from shards_helper import write_packed_dataset  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def packed_dataset(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """3 shards × 12 packed sequences of 128 tokens: COCO captions with 56px images, Wikipedia text."""
    return write_packed_dataset(tmp_path_factory.mktemp("packed"), shared_data)
