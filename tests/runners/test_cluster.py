"""The same job on a real two-node Ray cluster gives the same records as on local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.dataset as pads

from tests.conftest import output_files


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


def _cluster_workers(temp_dir: str) -> list[tuple[int, str]]:
    """(pid, title) of the busy Ray workers of the cluster whose raylets name ``temp_dir``."""
    procs = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(proc.name)] = (ppid, cmdline)
    raylets = {pid for pid, (_, cmd) in procs.items() if "raylet" in cmd and temp_dir in cmd}
    return [
        (pid, cmd.strip())
        for pid, (ppid, cmd) in procs.items()
        if ppid in raylets and cmd.startswith("ray::") and not cmd.startswith("ray::IDLE")
    ]


def _kill_one_worker(temp_dir: str, stop: threading.Event, killed: list[str]) -> None:
    """Wait for a busy worker of the filter, dedup or tokenize phases and SIGKILL it, once."""
    while not stop.is_set():
        busy = [(pid, title) for pid, title in _cluster_workers(temp_dir) if "Map" in title]
        if busy:
            pid, title = busy[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(title)
            return
        time.sleep(0.05)


def test_build_on_two_nodes_with_a_worker_killed_equals_local(
    ray_cluster_nodes, sample_reference_build, tmp_path
):
    """`mm1data build --ray-address` on the two-node cluster, with one busy Ray worker SIGKILLed
    mid-job: the job still succeeds (Ray retries the task or restarts the actor) and its shards,
    manifest and rejects are byte-identical to the local build's."""
    local_out, local_stats = sample_reference_build
    address, temp_dir = ray_cluster_nodes
    out = tmp_path / "cluster"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_worker, args=(temp_dir, stop, killed))
    killer.start()
    try:
        proc = _mm1data(
            "build", "--mix", "45:45:10", "--shard-size", "1", "--seq-len", "1024", "--quiet",
            "--ray-address", address, "--output", str(out),
        )  # fmt: skip
    finally:
        stop.set()
        killer.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert killed, "no busy Ray worker was seen to kill"
    assert output_files(out) == output_files(local_out)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["streams"] == local_stats["streams"]
