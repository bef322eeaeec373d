"""Shared fixtures: one Ray session for the whole test run, and the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent


def _shared_data() -> Path | None:
    env = os.environ.get("MM1DATA_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data-candidates", REPO / "shared" / "data-candidates"]
    for c in candidates:
        if (c / "SOURCES.md").is_file():
            return c
    return None


SHARED = _shared_data()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data-candidates (real data kept out of the package for licence reasons)."""
    if SHARED is None:
        pytest.fail("shared real data not found: set MM1DATA_SHARED_DATA or put shared/ beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray session shared by all tests (ray.init costs seconds and ~1 GB)."""
    import ray

    from mm1data.runners.ray_session import configure_data_context

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=1024**3,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
    configure_data_context(quiet=True)
    yield ray
    # left running: pytest exits the process, and other session fixtures may still use it


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO
