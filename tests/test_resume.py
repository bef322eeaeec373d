"""Resumable `mm1data build`: a build SIGKILLed at three different points and rerun with the same
arguments ends byte-identical to an uninterrupted build; a changed filter threshold recomputes
only the stages downstream of the filter."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mm1data.build import run_build
from mm1data.config import SAMPLE_RECIPE, BuildConfig, load_recipe
from mm1data.report import StageLog
from tests.conftest import REFERENCE_BUILD, output_files

CLI = [sys.executable, "-m", "mm1data.cli", "build", "--mix", "45:45:10"]
CLI_ARGS = ["--shard-size", "1", "--seq-len", "1024", "--log-json"]


@pytest.fixture(scope="module")
def reference(sample_reference_build) -> tuple[Path, dict]:
    """An uninterrupted build of the bundled sample, 1 sequence per shard."""
    assert sample_reference_build[1]["shards"] >= 3  # so a kill can land between shard writes
    return sample_reference_build


def events_of(stderr: str) -> list[dict]:
    """The JSON progress events (``--log-json``) in a build's stderr."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def stages(events: list[dict], kind: str) -> list[str]:
    """The stages of ``events`` that were ``done`` or ``resumed`` (from a checkpoint)."""
    return [e["stage"] for e in events if e["event"].startswith(kind)]


def kill_when(out: Path, marker: str, timeout_s: float = 900) -> list[dict]:
    """Start the CLI build and SIGKILL its whole process group (driver and its local Ray) as soon
    as ``marker`` (a glob under ``out``) exists; returns the progress events it printed."""
    log = out.parent / f"killed-{time.monotonic_ns()}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*CLI, "--output", str(out), *CLI_ARGS],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not list(out.glob(marker)):
                assert proc.poll() is None, f"build ended (rc {proc.returncode}) before reaching {marker}"
                assert time.monotonic() < deadline, f"no {marker} after {timeout_s} s"
                time.sleep(0.02)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "manifest.json").exists()  # a killed build never looks complete
    return events_of(log.read_text())


def resume(out: Path) -> tuple[dict, list[dict]]:
    """Rerun the same command to the end; returns its stats and its progress events."""
    done = subprocess.run(
        [*CLI, "--output", str(out), *CLI_ARGS], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), events_of(done.stderr)


def test_killed_at_three_points_resumes_to_identical_output(reference, tmp_path):
    ref_out, ref_stats = reference
    out = tmp_path / "out"
    # 1. killed once ingest is committed, while filtering
    first = kill_when(out, "_work/ingest/_SUCCESS")
    assert stages(first, "resumed") == []
    # 2. the rerun starts from the ingest checkpoint; killed once dedup is committed (tokenizing)
    second = kill_when(out, "_work/dedup/_SUCCESS")
    assert stages(second, "resumed") == ["ingest"]
    assert stages(second, "done")[0] == "filter"  # (the kill may beat dedup's own progress line)
    ingest_marker = (out / "_work/ingest/_SUCCESS").stat().st_mtime_ns
    # 3. the next rerun starts from the dedup checkpoint; killed once the first shard is written
    third = kill_when(out, "_work/shards/shard-*.json")
    assert stages(third, "resumed") == ["ingest", "filter", "dedup"]
    assert (out / "_work/ingest/_SUCCESS").stat().st_mtime_ns == ingest_marker
    first_shards = {  # shards whose tar and marker were both written before the kill
        p.name.removesuffix(".json"): (out / p.name.removesuffix(".json")).stat().st_mtime_ns
        for p in out.glob("_work/shards/shard-*.json")
    }
    assert first_shards
    # 4. the last rerun writes only the missing shards
    stats, events = resume(out)
    assert stages(events, "resumed") == ["ingest", "filter", "dedup", "tokenize", "plan"]
    assert "write (partly)" in stats["resumed"]
    for name, mtime in first_shards.items():  # shards finished before the kill are not rewritten
        assert (out / name).stat().st_mtime_ns == mtime
    assert not list(out.glob("*.partial"))
    assert output_files(out) == output_files(ref_out)
    assert stats["streams"] == ref_stats["streams"]


def test_changed_filter_threshold_recomputes_only_downstream(reference, tmp_path):
    ref_out, ref_stats = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    recipe = load_recipe(SAMPLE_RECIPE)
    ingest_marker = (out / "_work/ingest/_SUCCESS").read_text()
    stricter = dataclasses.replace(
        recipe.filters,
        gopher_quality=dataclasses.replace(recipe.filters.gopher_quality, min_doc_words=200),
    )
    log = StageLog(quiet=True)
    stats = run_build(
        dataclasses.replace(recipe, filters=stricter, build=BuildConfig(**REFERENCE_BUILD)), str(out), log=log
    )
    assert stats["resumed"] == ["ingest"]
    assert (out / "_work/ingest/_SUCCESS").read_text() == ingest_marker
    assert stats["streams"]["text"]["kept"] < ref_stats["streams"]["text"]["kept"]
    assert stats["streams"]["caption"] == ref_stats["streams"]["caption"]
    assert json.loads((out / "manifest.json").read_text()) != json.loads(
        (ref_out / "manifest.json").read_text()
    )


def test_restart_forgets_every_checkpoint(reference, tmp_path):
    """``--restart`` removes the manifest, shards, rejects and ``_work`` of an earlier run first."""
    from mm1data.runners.executor import retract

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    retract(str(out), restart=False)
    assert not (out / "manifest.json").exists() and (out / "_work/dedup/_SUCCESS").exists()
    retract(str(out), restart=True)
    assert sorted(p.name for p in out.iterdir()) == []
