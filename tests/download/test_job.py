"""`mm1data download` end to end: img2dataset layout, kill and rerun (no URL fetched twice, same
bytes), and the real 10,000-row img2dataset table with unreachable URLs accounted for, fast."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import yaml

from mm1data.download.job import run_download
from tests.download.conftest import loopback_config
from tests.download.dns import NxDomainServer


def outputs(out: Path) -> dict[str, bytes]:
    """The shards and per-row tables of a download, by name."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("[0-9]*.*"))}


def test_killed_download_resumes_without_refetching_and_writes_the_same_bytes(
    ray_local, server, coco_images, nxdomain, tmp_path
):
    names = list(coco_images)
    urls = [server.url(f"img/{n}") for n in names[:40]] + [server.url(f"404/{n}") for n in names[:4]]
    captions = [f"picture number {i}" for i in range(len(urls))]
    pq.write_table(pa.table({"url": urls, "text": captions}), tmp_path / "urls.parquet")
    cfg = loopback_config(nxdomain.address, checkpoint_rows=1, urls_per_task=8)

    # an uninterrupted run gives the reference bytes
    ref = run_download([str(tmp_path / "urls.parquet")], str(tmp_path / "ref"), cfg, shard_size=16)
    assert ref["read"] == 44 and ref["kept"] == 40 and ref["rejected_by_reason"] == {"download/http_404": 4}
    server.reset_counts()

    # the same download in another process, SIGKILLed once 15 responses are served and checkpointed
    # and more requests are in flight (held by the server: they are never answered)
    recipe = tmp_path / "recipe.yaml"
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}
    recipe.write_text(yaml.safe_dump({"download": fields}))
    out = tmp_path / "out"
    server.hold(after=15)
    address = ray_local.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        "-m",
        "mm1data.cli",
        "download",
        str(tmp_path / "urls.parquet"),
        "--output",
        str(out),
        "--shard-size",
        "16",
        "--config",
        str(recipe),
        "--quiet",
        "--ray-address",
        address,
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    parts = out / "_work" / "download" / "results" / "original"
    deadline = time.time() + 240
    while time.time() < deadline and not (
        sum(server.served.values()) == 15
        and parts.is_dir()
        and len(list(parts.rglob("part-*"))) == 15
        and sum(server.received.values()) > 15
    ):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    assert len(list(parts.rglob("part-*"))) == 15, "the killed run never got 15 results checkpointed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert sum(server.received.values()) > 15  # requests were in flight (held) when it died
    deadline = time.time() + 120
    while server.held_open() and time.time() < deadline:  # Ray ends the dead driver's fetch actors
        time.sleep(0.2)
    assert server.held_open() == 0
    server.release()

    # the rerun fetches only what has no result; no URL is served twice; same bytes as the reference
    # (with the images of the shards split over several partitions: the same bytes as one)
    small = dataclasses.replace(cfg, bytes_per_partition=1 << 20)
    again = run_download([str(tmp_path / "urls.parquet")], str(out), small, shard_size=16)
    assert again["download"]["reused"] == 15 and again["download"]["fetched"] == 44 - 15
    assert max(server.served.values()) == 1 and sum(server.served.values()) == 44
    assert outputs(out) == outputs(tmp_path / "ref")

    # img2dataset's layout: key.jpg, key.txt, key.json per kept row; every row in the Parquet
    with tarfile.open(out / "00000.tar") as tar:
        members = tar.getnames()
    assert members[:3] == ["0000000.jpg", "0000000.json", "0000000.txt"]  # shard 00000, row 00
    rows = pads.dataset(sorted(str(p) for p in out.glob("[0-9]*.parquet"))).to_table()
    assert rows.num_rows == 44 and rows.column("status").to_pylist().count("success") == 40
    assert pads.dataset(out / "urls").to_table().num_rows == 44


def test_unreachable_10000_row_table_is_accounted_for_fast(ray_local, shared_data, tmp_path):
    table = shared_data / "a-img2dataset-captions" / "test_10000.parquet"
    with NxDomainServer() as dns:
        cfg = loopback_config(dns.address, timeout_s=10.0)
        start = time.perf_counter()
        stats = run_download([str(table)], str(tmp_path / "out"), cfg, shard_size=5000)
        wall = time.perf_counter() - start
    # every row out: the one URL that is no URL ("UNLIKELY") at ingest, the others at DNS
    assert stats["read"] == 10_000 == stats["rejected"]
    # (and one URL names an internet address: refused, the test stays on the loopback)
    want = {"download/dns": 9_998, "download/blocked_address": 1, "ingest/no_image_bytes": 1}
    assert stats["rejected_by_reason"] == want
    rows = pads.dataset(sorted(str(p) for p in (tmp_path / "out").glob("[0-9]*.parquet"))).to_table()
    assert rows.num_rows == 10_000
    urls = pads.dataset(tmp_path / "out" / "urls").to_table()
    assert urls.num_rows == 9_998  # distinct URLs (one URL appears twice)
    assert set(urls.column("attempts").to_pylist()) == {1}
    # one lookup per host and worker (A and AAAA), not one timeout per URL
    hosts = {urlsplit(u).hostname for u in pq.read_table(table).column("URL").to_pylist()}
    names = {h for h in hosts if h and not h.replace(".", "").isdigit() and h.isascii()}
    assert len(set(dns.queries) & names) >= 0.99 * len(names)  # (c-ares refuses a few odd names unasked)
    # fetch tasks take a host's URLs together: A and AAAA once per host and task it spans
    per_host = Counter(urlsplit(u).hostname for u in urls.column("url").to_pylist())
    assert all(n <= 2 * (per_host[h] // cfg.urls_per_task + 2) for h, n in dns.queries.items())
    assert sum(urls.column("seconds").to_pylist()) < 0.05 * 9_998 * cfg.timeout_s
    assert wall < 600
