"""A real two-node Ray cluster on this machine: a head and a second node, one CPU each."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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
def ray_cluster() -> Iterator[str]:
    """Start ``ray start --head`` and a second ``ray start --address`` node; yield the address."""
    if not shutil.which(RAY):
        pytest.fail(f"ray CLI not found beside {sys.executable}")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    _ray("start", "--head", "--port", str(port), "--include-dashboard", "false", *common, env=env)
    try:
        _ray("start", "--address", address, *common, env=env)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
