"""Scaling of ``mm1data build`` on Ray, Ray's fixed cost per job, publish throughput, peak memory.

Data: the shared real data (COCO-mini train+val with their images, the MMC4 shard, the Wikipedia
ZIM, the Dolma CC file and the three C4 samples), scaled ``--scale`` times by linking each source
file under ``--scale`` different names (so every copy has its own lineage; exact dedup then
removes the repeats, as it would in a real crawl that saw the same pages again). The two
corpus-wide repeat filters (captions on many images, image URLs in many docs) are switched off,
since they would reject every copy.

Rows printed:

- the same build (``mm1data build --mix 45:45:10``, fresh output each time) on the local default
  (``ray.init`` inside the command), on a 1-node ``ray start`` cluster (2 CPUs) and on a 2-node
  cluster on this machine (1 CPU each, same total): wall seconds, records read per second, the
  driver's peak RSS, and the peak summed RSS of the driver and every Ray process it started
  (local mode only; shared object-store pages are counted once per process that maps them);
- Ray's fixed overhead per job: ``ray.init`` of a local Ray, and the wall time of a one-row
  Ray Data job on it (the floor under every stage of a build);
- publish throughput to a moto S3 server on 127.0.0.1: ``mm1data publish`` (verified, manifest
  last) vs ``s3fs`` ``put`` (the peer, unverified) of the same shard files, in this same run.

    python benchmarks/scale.py [--scale 5] [--modes local,1-node,2-node] [--skip-publish]
    python benchmarks/scale.py --scale 50 --modes local --skip-publish   # the x50 peak-RSS run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MM1DATA_SHARED_DATA", REPO.parent / "shared" / "data-candidates"))
BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def scaled_recipe(root: Path, scale: int) -> Path:
    """A YAML recipe over ``scale`` linked copies of each shared source file; returns its path."""
    links = root / "sources"
    links.mkdir(parents=True)

    def copies(src: Path) -> list[str]:
        out = []
        for i in range(scale):
            dst = links / f"{src.stem.split('.')[0]}.copy{i:03d}{''.join(src.suffixes)}"
            dst.symlink_to(src)
            out.append(str(dst))
        return out

    coco = DATA / "a-coco-mini"
    captions = [
        {"path": p, "format": "coco", "images": str(coco / split)}
        for split in ("train2017", "val2017")
        for p in copies(coco / "annotations" / f"captions_{split}.json")
    ]
    interleaved = [
        {"path": p, "format": "mmc4"} for p in copies(next((DATA / "b-interleaved").glob("mmc4*.jsonl")))
    ]
    interleaved += [
        {"path": p, "format": "zim"} for p in copies(next((DATA / "b-interleaved").glob("*.zim")))
    ]
    text = [{"path": p, "name": "dolma"} for p in copies(next((DATA / "c-text").glob("dolma-*.jsonl.gz")))]
    text += [
        {"path": p, "name": "c4"} for f in sorted((DATA / "c-text").glob("olmo-c4-*.gz")) for p in copies(f)
    ]
    recipe = root / "recipe.yaml"
    # the corpus-wide repeat rules (a caption on many images, an image URL in many docs) would
    # reject every linked copy: repeating the data is what they are meant to catch
    filters = {"caption": {"max_repeats": None}, "interleaved": {"max_image_url_repeats": None}}
    sources = {"captions": captions, "interleaved": interleaved, "text": text}
    recipe.write_text(json.dumps({"sources": sources, "filters": filters}))
    return recipe  # JSON is YAML


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(nodes: int, cpus: int, temp_dir: str) -> str:
    """``ray start`` a head and ``nodes - 1`` more nodes of ``cpus`` CPUs each; returns the address."""
    port = _free_port()
    common = ["--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    head = ["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir]
    subprocess.run([BIN / "ray", "start", *head, *common], check=True, capture_output=True, env=ENV)
    for _ in range(nodes - 1):
        args = ["start", "--address", f"127.0.0.1:{port}", *common]
        subprocess.run([BIN / "ray", *args], check=True, capture_output=True, env=ENV)
    return f"127.0.0.1:{port}"


def stop_cluster(temp_dir: str) -> None:
    """SIGKILL the processes of the cluster started with ``temp_dir`` (not any other Ray)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if temp_dir.encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass
    shutil.rmtree(temp_dir, ignore_errors=True)


def _rss_tree(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, summed RSS of ``pid`` and all its descendants), in bytes."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        p = int(proc.name)
        children.setdefault(int(fields["PPid"]), []).append(p)
        rss[p] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return rss.get(pid, 0), total


def timed_build(recipe: Path, out: Path, address: str | None) -> dict:
    """Run ``mm1data build`` on ``recipe``; wall time, records read, peak driver and tree RSS."""
    cmd = [BIN / "mm1data", "build", "--mix", "45:45:10", "--config", str(recipe), "--output", str(out)]
    cmd += ["--quiet", "--log-json", "--restart"] + (["--ray-address", address] if address else [])
    peak = {"driver": 0, "tree": 0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            driver, tree = _rss_tree(proc.pid)
            peak["driver"], peak["tree"] = max(peak["driver"], driver), max(peak["tree"], tree)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"build failed ({proc.returncode}):\n{stderr[-3000:]}")
    stats = json.loads(stdout.strip().splitlines()[-1])
    read = sum(s["read"] for s in stats["streams"].values())
    return {"wall": wall, "read": read, "stats": stats, **peak}


def ray_overhead() -> tuple[float, float]:
    """(seconds for ``ray.init`` of a local Ray, seconds for a one-row Ray Data job on it)."""
    code = (
        "import time, json; t0 = time.perf_counter(); import ray, ray.data\n"
        "ray.init(address='local', num_cpus=2, include_dashboard=False, logging_level='ERROR')\n"
        "t1 = time.perf_counter(); ray.data.range(1).map_batches(lambda b: b).materialize()\n"
        "t2 = time.perf_counter(); ray.data.range(1).map_batches(lambda b: b).materialize()\n"
        "print(json.dumps([t1 - t0, time.perf_counter() - t2]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def publish_rates(tmp: Path, shards: int = 6, shard_mb: float = 16.0) -> tuple[float, float]:
    """(mm1data publish MB/s, s3fs put MB/s) of the same files to a moto server on 127.0.0.1."""
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(REPO / "benchmarks"))
    from publish import make_dataset

    from mm1data.shards.publish import publish

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    src = tmp / "publish-src"
    total = make_dataset(src, shards, shard_mb)
    peer = s3fs.S3FileSystem(skip_instance_cache=True)
    peer.mkdir("bench")
    t0 = time.perf_counter()
    peer.put(sorted(str(p) for p in src.glob("*.tar*")), "bench/peer/", batch_size=8)  # tars + .tar.idx
    peer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    publish(src, "s3://bench/mm1", workers=8)
    ours_s = time.perf_counter() - t0
    server.stop()
    return total / 1e6 / ours_s, total / 1e6 / peer_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=5, help="Copies of each shared source file.")
    ap.add_argument("--modes", default="local,1-node,2-node")
    ap.add_argument("--skip-publish", action="store_true")
    args = ap.parse_args()
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        recipe = scaled_recipe(tmp, args.scale)
        print(f"data: shared data x{args.scale} (COCO-mini, MMC4, ZIM, Dolma, C4); {os.cpu_count()} cores\n")
        rows = []
        for mode in modes:
            temp_dir, address = None, None
            if mode != "local":
                nodes = int(mode.split("-")[0])
                temp_dir = tempfile.mkdtemp(prefix="mm1-bench-ray-")
                address = start_cluster(nodes, 2 // nodes, temp_dir)
            try:
                r = timed_build(recipe, tmp / f"out-{mode}", address)
            finally:
                if temp_dir:
                    stop_cluster(temp_dir)
            rows.append((mode, r))
        print(
            f"| {'build on':<26} | {'records':>8} | {'wall s':>7} | {'records/s':>9} | {'driver RSS':>10} |"
        )
        print(f"|{'-' * 28}|{'-' * 9}:|{'-' * 8}:|{'-' * 10}:|{'-' * 11}:|")
        names = {
            "local": "local Ray (default)",
            "1-node": "1-node cluster, 2 CPUs",
            "2-node": "2-node cluster, 1+1 CPUs",
        }
        for mode, r in rows:
            name = names.get(mode, mode)
            rss, rate = f"{r['driver'] / 2**20:.0f} MiB", r["read"] / r["wall"]
            print(f"| {name:<26} | {r['read']:>8} | {r['wall']:>7.1f} | {rate:>9.1f} | {rss:>10} |")
        for mode, r in rows:
            if mode == "local":
                print(f"\nlocal run: peak RSS, driver + its Ray processes: {r['tree'] / 2**30:.2f} GiB")
                t = r["stats"]["totals"]
                print(f"local run: {t['sequences']} sequences, {t['shards']} shards, {t['images']} images")
        if len(rows) > 1 and rows[0][0] == "local":
            for mode, r in rows[1:]:
                print(f"{mode} / local throughput: {rows[0][1]['wall'] / r['wall']:.2f}x")
        init_s, job_s = ray_overhead()
        print(f"\nRay fixed overhead: ray.init (local) {init_s:.1f} s; a one-row Ray Data job {job_s:.2f} s")
        if not args.skip_publish:
            ours, peer = publish_rates(tmp)
            print(f"publish to moto S3: mm1data {ours:.1f} MB/s (verified), s3fs put {peer:.1f} MB/s")
            print(f"mm1data publish / s3fs put: {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
