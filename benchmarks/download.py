"""mm1data download vs img2dataset 1.47 on the same URL list, served by one loopback HTTP server.

    python benchmarks/download.py [--urls 5000] [--image-size 378] [--img2dataset-python PY]

The URL list: ``--urls`` distinct URLs of the 159 COCO-mini JPEGs (``../shared/data-candidates``)
on a real HTTP server on 127.0.0.1 (aiohttp, in this process), with ``--fail-pct`` planted failures
spread evenly (a third each: 404, an HTML page served as image/jpeg, a truncated JPEG). Both tools
read the same Parquet table (``url``, ``caption``), center-crop to ``--image-size`` and write
WebDataset shards; mm1data also writes its per-row and per-URL tables and checkpoints.

img2dataset pins ``webdataset<0.3``, so it runs from its own virtualenv: ``--img2dataset-python``,
else ``$IMG2DATASET_PYTHON``, else ``/work/venvs/img2dataset/bin/python`` (make it with
``python -m venv /work/venvs/img2dataset && /work/venvs/img2dataset/bin/pip install img2dataset==1.47.0``).

Printed per tool: wall seconds (Ray start-up included for mm1data), images written, images/s,
images/s per core (÷ the machine's cores, which both tools use), images per CPU-second (user +
system time of the whole process tree, sampled every 0.2 s from /proc), and the peak PSS of the
tree (shared pages split between processes); then the ratio mm1data / img2dataset.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.download.dns import NxDomainServer  # noqa: E402
from tests.download.server import ImageServer  # noqa: E402

SHARED = Path(os.environ.get("MM1DATA_SHARED_DATA", REPO.parent / "shared" / "data-candidates"))


def tree_sample(pid: int) -> dict[int, tuple[float, int]]:
    """``{pid: (CPU seconds so far, PSS bytes)}`` for ``pid`` and all its descendants (from /proc).
    PSS splits shared pages (Ray's object store is mapped into every worker) between processes."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            p = int(stat.split("/")[2])
            children.setdefault(int(fields[1]), []).append(p)
            cpu[p] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        pss = 0
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
        out[p] = (cpu.get(p, 0.0), pss)
    return out


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``: wall seconds, CPU seconds of its whole process tree (the last CPU time seen of
    every process, sampled every 0.2 s) and the peak PSS of the tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak, cpu = [0], {}

    def sample() -> None:
        while proc.poll() is None:
            now = tree_sample(proc.pid)
            cpu.update({p: max(c, cpu.get(p, 0.0)) for p, (c, _) in now.items()})
            peak[0] = max(peak[0], sum(m for _, m in now.values()))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        sys.stderr.write(out.decode(errors="replace")[-4000:])
        raise SystemExit(f"{cmd[0]} failed with exit code {proc.returncode}")
    return {
        "wall_s": wall,
        "cpu_s": sum(cpu.values()),
        "cpu_by_pid": cpu,
        "peak_rss": peak[0],
        "log": out.decode(errors="replace"),
    }


def make_table(srv: ImageServer, n: int, fail_pct: float, path: Path) -> int:
    """The URL table; returns how many URLs should succeed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(srv.images)
    every = max(1, round(100 / fail_pct)) if fail_pct > 0 else 0
    urls, good = [], 0
    for i in range(n):
        name = names[i % len(names)]
        kind = "img"
        if every and i % every == every - 1:
            kind = ("404", "html", "truncated")[(i // every) % 3]
        good += kind == "img"
        urls.append(srv.url(f"{kind}/{name}?n={i}"))
    captions = [f"photo {i} of the benchmark set" for i in range(n)]
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return good


def run_img2dataset(python: str, table: Path, out: Path, size: int, cores: int) -> dict:
    code = (
        "from img2dataset import download\n"
        f"download(url_list={str(table)!r}, input_format='parquet', url_col='url', caption_col='caption',"
        f" output_format='webdataset', output_folder={str(out)!r}, processes_count={cores},"
        f" thread_count=64, image_size={size}, resize_mode='center_crop', number_sample_per_shard=10000,"
        " timeout=10, retries=0, distributor='multiprocessing', enable_wandb=False)\n"
    )
    # no update check over the network (albumentations asks PyPI at import otherwise)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "NO_ALBUMENTATIONS_UPDATE": "1"}
    m = measure([python, "-c", code], env)
    ok = 0
    for stats in out.glob("*_stats.json"):
        ok += json.loads(stats.read_text())["successes"]
    m["images"] = ok
    return m


def run_mm1data(table: Path, out: Path, size: int, recipe: Path) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [
        sys.executable,
        "-m",
        "mm1data.cli",
        "download",
        str(table),
        "--output",
        str(out),
        "--image-size",
        str(size),
        "--shard-size",
        "10000",
        "--config",
        str(recipe),
        "--quiet",
    ]
    m = measure(cmd, env)
    stats = json.loads((out / "stats.json").read_text())
    m["images"] = stats["kept"]
    m["ray_start_s"] = stats["ray_start_s"]
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--urls", type=int, default=5000)
    ap.add_argument("--fail-pct", type=float, default=3.0)
    ap.add_argument("--image-size", type=int, default=378)
    ap.add_argument(
        "--img2dataset-python",
        default=os.environ.get("IMG2DATASET_PYTHON", "/work/venvs/img2dataset/bin/python"),
    )
    args = ap.parse_args()
    if not Path(args.img2dataset_python).exists():
        raise SystemExit(f"img2dataset's python not found: {args.img2dataset_python} (see the module doc)")
    cores = os.cpu_count() or 1
    images = {p.name: p.read_bytes() for p in sorted(SHARED.glob("a-coco-mini/*2017/*.jpg"))}
    with tempfile.TemporaryDirectory() as tmp, ImageServer(images) as srv, NxDomainServer() as dns:
        tmp_path = Path(tmp)
        good = make_table(srv, args.urls, args.fail_pct, tmp_path / "urls.parquet")
        # loopback only: names resolve at a stub that answers NXDOMAIN, connections reach 127.0.0.0/8 only
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"download:\n  allow_networks: ['127.0.0.0/8']\n  dns_servers: ['{dns.address}']\n")
        rows = {
            "img2dataset 1.47": run_img2dataset(
                args.img2dataset_python, tmp_path / "urls.parquet", tmp_path / "i2d", args.image_size, cores
            ),
            "mm1data": run_mm1data(tmp_path / "urls.parquet", tmp_path / "mm1", args.image_size, recipe),
        }
    print(
        f"\n{args.urls} URLs ({good} good, {args.urls - good} planted failures) on 127.0.0.1, "
        f"center crop {args.image_size}, {cores} cores"
    )
    print(
        f"{'tool':<18}{'wall s':>8}{'images':>8}{'img/s':>8}{'img/s/core':>12}{'img/CPU-s':>11}"
        f"{'peak PSS':>12}"
    )
    for name, m in rows.items():
        rate = m["images"] / m["wall_s"]
        print(
            f"{name:<18}{m['wall_s']:>8.1f}{m['images']:>8}{rate:>8.1f}{rate / cores:>12.1f}"
            f"{m['images'] / max(m['cpu_s'], 1e-9):>11.1f}{m['peak_rss'] / 2**20:>8.0f} MiB"
        )
    a, b = rows["mm1data"], rows["img2dataset 1.47"]
    ratio = (a["images"] / a["wall_s"]) / (b["images"] / b["wall_s"])
    cpu_ratio = (a["images"] / a["cpu_s"]) / (b["images"] / b["cpu_s"])
    print(
        f"mm1data / img2dataset: {ratio:.2f}x images/s per core, {cpu_ratio:.2f}x images per CPU-second "
        f"(mm1data's Ray start-up: {a['ray_start_s']:.1f} s of its wall time)"
    )


if __name__ == "__main__":
    main()
