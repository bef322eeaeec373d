"""The same job on a real two-node Ray cluster gives the same records as on local Ray."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.dataset as pads


def _mm1data(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mm1data.cli", *args], capture_output=True, text=True, timeout=600
    )


def _records(root, stream: str) -> list[dict]:
    table = pads.dataset(root / stream).to_table()
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def test_ingest_on_two_nodes_equals_local(ray_cluster, tmp_path):
    local = _mm1data("ingest", "--quiet", "--output", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    cluster = _mm1data(
        "ingest", "--quiet", "--ray-address", ray_cluster, "--output", str(tmp_path / "cluster")
    )
    assert cluster.returncode == 0, cluster.stderr
    for stream in ("caption", "interleaved", "text"):
        assert _records(tmp_path / "cluster", stream) == _records(tmp_path / "local", stream), stream


def test_unreachable_cluster_fails_with_exit_2(tmp_path):
    proc = _mm1data("ingest", "--quiet", "--ray-address", "127.0.0.1:1", "--output", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: cannot connect to Ray cluster at 127.0.0.1:1")
