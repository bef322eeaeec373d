"""A real two-node Ray cluster on this machine: a head and a second node, one CPU each."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict) -> None:
    subprocess.run([RAY, *args], check=True, capture_output=True, env=env, timeout=120)


@pytest.fixture(scope="session")
def ray_cluster(ray_cluster_nodes: tuple[str, str]) -> str:
    """The address of the two-node cluster."""
    return ray_cluster_nodes[0]


@pytest.fixture(scope="session")
def ray_cluster_nodes() -> Iterator[tuple[str, str]]:
    """Start ``ray start --head`` and a second ``ray start --address`` node; yield the address and
    the cluster's ``--temp-dir`` (its raylets' command lines name it)."""
    if not shutil.which(RAY):
        pytest.fail(f"ray CLI not found beside {sys.executable}")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="mm1-ray-cluster-")
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = ["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir]
    _ray("start", *head, *common, env=env)
    try:
        _ray("start", "--address", address, *common, env=env)
        yield address, temp_dir
    finally:
        _kill_cluster(temp_dir)


def _kill_cluster(temp_dir: str) -> None:
    """SIGKILL only this cluster's processes (their command lines name its temp dir).

    ``ray stop --force`` would also kill the test session's own local Ray, and a driver whose
    raylet dies exits the whole pytest process.
    """
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(proc.name), signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)
