"""One place that starts (or joins) Ray with settings that suit the machine."""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from mm1data.errors import UsageError

OBJECT_STORE_BYTES = 2 * 1024**3

BLOCK_BYTES = 32 * 1024**2
"""Largest block a Ray Data task builds (Ray's default is 128 MiB). A fused map holds a block at
each of its steps, so this bounds a worker's memory; 32 MiB keeps it flat from 10k records up
(benchmarks/growth.py, tier A)."""

ARROW_POOL = "system"
"""Arrow's allocator in every mm1data process (``ARROW_DEFAULT_MEMORY_POOL``). Arrow's default,
mimalloc, keeps freed pages per thread, so a reused worker's memory creeps up with the tasks it
has run: at 100k records (tier A, tokenize phase rerun alone) the largest worker peaked at 670 MiB
with mimalloc and 535 MiB with the system allocator."""


MMAP_THRESHOLD = 1 << 20
"""glibc's mmap threshold in every mm1data process, fixed. Left dynamic, glibc raises it after each
freed buffer and then carves later buffers out of a heap it cannot give back: a process streaming
80 MB of Parquet row groups grew 59 MiB more than one streaming 10 MB without it, 5 MiB with it
(``tests/ingest/test_captions.py``)."""

MALLOC_ARENAS = 2
"""glibc malloc arenas per process. Ray's many native threads each get an arena by default (up
to 8 per core), and freed memory scattered over them is not given back."""

WORKER_ENV = {
    "ARROW_DEFAULT_MEMORY_POOL": ARROW_POOL,
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_ARENA_MAX": str(MALLOC_ARENAS),
}
"""Environment of every process mm1data starts (glibc reads its variables when a process starts)."""


def use_memory_settings() -> None:
    """Make :data:`ARROW_POOL` Arrow's allocator in this process, give it the malloc settings of
    :data:`WORKER_ENV` (through ``mallopt``: it started before they were set) and set
    :data:`WORKER_ENV` for the processes it starts (Ray's workers among them)."""
    import pyarrow as pa

    os.environ.update(WORKER_ENV)
    if pa.default_memory_pool().backend_name != ARROW_POOL:
        pa.set_memory_pool(pa.system_memory_pool())
    _tune_malloc()


@functools.cache
def _tune_malloc() -> None:
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_mmap_threshold, m_arena_max = -3, -8  # (malloc.h)
    libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
    libc.mallopt(m_arena_max, MALLOC_ARENAS)


def release_memory() -> None:
    """Give freed memory back to the system at the end of a task (under :data:`ARROW_POOL` this is
    ``malloc_trim``), so a reused worker starts its next task small."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


@functools.cache
def remote_task(fn, num_cpus: float = 1):
    """``fn`` as a Ray remote function holding ``num_cpus`` (made once per process)."""
    import ray

    return ray.remote(num_cpus=num_cpus)(fn)


def configure_data_context(quiet: bool = True) -> None:
    """Set Ray Data options we rely on: ordered output and, when ``quiet``, no progress bars."""
    import ray.data
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.target_max_block_size = BLOCK_BYTES
    # mm1data shuffles through files (runners.shuffle.cogroup); should a Ray shuffle ever run,
    # task-based: each reduce task holds one partition (hash-shuffle aggregator actors hold every
    # partition assigned to them until the end, so their memory grows with the data)
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    ctx.enable_progress_bars = not quiet
    ctx.enable_operator_progress_bars = not quiet
    ctx.print_on_execution_start = not quiet
    level = logging.WARNING if quiet else logging.INFO
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast with :class:`UsageError` when ``host:port`` of a Ray address does not answer.

    ``ray.init`` itself retries an unreachable cluster for minutes.
    """
    target = address.split("://", 1)[-1]
    if target in ("auto", "local"):
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot connect to Ray cluster at {address}: {e}") from e


@contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = True
) -> Iterator[None]:
    """Start a local Ray (no dashboard, bounded object store) or join ``address``; shut down after.

    If Ray is already initialised in this process (tests share one session), it is reused and
    left running.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray starts workers at nice 15 (background work); here they are the job, so a local session
    # runs them at normal priority, like any other tool on a shared machine
    os.environ.setdefault("RAY_worker_niceness", "0")
    use_memory_settings()
    if ray.is_initialized():
        configure_data_context(quiet)
        yield
        return
    kwargs: dict = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": not quiet,
        "runtime_env": {"env_vars": WORKER_ENV},  # (a cluster's workers)
    }
    if address:
        kwargs["address"] = address
    else:
        kwargs["address"] = "local"
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        kwargs["object_store_memory"] = OBJECT_STORE_BYTES
    if address:
        check_reachable(address)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        if address:
            raise UsageError(f"cannot connect to Ray cluster at {address}: {e}") from e
        raise
    configure_data_context(quiet)
    try:
        yield
    finally:
        ray.shutdown()
