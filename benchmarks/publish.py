"""Publish throughput to a local S3 server: ``mm1data publish`` vs ``s3fs`` ``put`` of the same files.

Data: packed-v1 shards made of the real COCO-mini val2017 JPEGs (one per sequence, with its
caption), repeated until each shard reaches ``--shard-mb`` MB (scaled data: the same 79 images
over and over), with their ``.tar.idx``, ``.nv-meta`` and manifest. Store: a moto S3 server on
127.0.0.1 in this process, as in the tests.

- peer: ``s3fs.S3FileSystem.put(files, prefix)`` (s3fs's own concurrent upload; multipart for big
  files), nothing verified;
- mm1data: :func:`mm1data.shards.publish.publish`: local sha256 check, parallel multipart
  uploads, every shard re-read from the store and re-hashed, then manifest.json;
- mm1data rerun: the same publish again (everything already there: verify only, nothing uploaded).

Prints MB/s (10^6 bytes of shards per wall second) for each, best of ``--repeats``, and the ratio.

    python benchmarks/publish.py [--shards 8] [--shard-mb 24] [--workers 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MM1DATA_SHARED_DATA", REPO.parent / "shared" / "data-candidates"))


def make_dataset(out: Path, shards: int, shard_mb: float) -> int:
    """A packed-v1 dataset of ``shards`` shards of about ``shard_mb`` MB each: one sequence per real
    COCO JPEG (kept as it is) with its caption bytes as tokens, written by mm1data's shard writer,
    with ``.tar.idx``, ``.nv-meta`` and manifest.json; returns the shards' total bytes."""
    import numpy as np

    from mm1data.shards.format import (
        Header,
        Mix,
        ShardEntry,
        Tokenizer,
        sample_key,
        shard_name,
    )
    from mm1data.shards.writer import assemble, finish_dataset, put_shard, tar_bytes

    coco = DATA / "a-coco-mini"
    anns = json.loads((coco / "annotations/captions_val2017.json").read_text())
    captions = {a["image_id"]: a["caption"] for a in anns["annotations"]}
    images = [
        ((coco / "val2017" / im["file_name"]).read_bytes(), captions.get(im["id"], "").encode())
        for im in anns["images"]
        if (coco / "val2017" / im["file_name"]).exists()
    ]
    seq_len, slot = 256, 16
    out.mkdir(parents=True, exist_ok=True)
    entries, k = [], 0
    for s in range(shards):
        samples, size, tokens = [], 0, 0
        while size < shard_mb * 1e6:
            jpg, txt = images[k % len(images)]
            ids = [2] * slot + list(txt[: seq_len - slot])
            ex = {
                "stream": "caption", "id": f"coco-{k}", "part": 0, "lineage": {"source": "b", "offset": k},
                "tokens": np.asarray(ids, "<i4").tobytes(), "loss_mask": np.ones(len(ids), "u1").tobytes(),
                "image_starts": [0], "images": [jpg], "slot_len": slot,
            }  # fmt: skip
            samples.append((sample_key(0, s, len(samples)), assemble([ex], seq_len, 0)))
            size += len(jpg) + 3 * 1024
            tokens += len(ids)
            k += 1
        tar, index = tar_bytes(samples)
        put_shard(str(out), shard_name(0, s), tar, index)
        entries.append(
            ShardEntry(
                path=shard_name(0, s), bytes=len(tar), sha256=hashlib.sha256(tar).hexdigest(),
                sequences=len(samples), images=len(samples), tokens={"caption": tokens},
                examples={"caption": len(samples)}, mix={"caption": 1.0}, full=s < shards - 1,
            )
        )  # fmt: skip
    header = Header(
        seq_len=seq_len, image_tokens=slot, max_images=1, image_size=640, jpeg_quality=95,
        tokenizer=Tokenizer(name="bytes", sha256="0" * 64, vocab_size=256),
        special_tokens={"pad": 0, "eos": 1, "image": 2}, epochs={"caption": 1.0},
        mix=Mix(target={"caption": 1.0}, unit="tokens", realized={"caption": 1.0}),
    )  # fmt: skip
    return finish_dataset(str(out), header, entries).bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=float, default=24.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import s3fs
    from moto.server import ThreadedMotoServer

    from mm1data.io.fs import fsspec_fs
    from mm1data.shards.publish import publish

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        }
    )
    fs, _ = fsspec_fs("s3://bench")
    fs.mkdir("bench")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "build"
        total = make_dataset(src, args.shards, args.shard_mb)
        files = sorted(str(p) for p in src.glob("*.tar*"))  # the shards and their .tar.idx
        print(f"data: {args.shards} tars of real COCO JPEGs (scaled, repeated), {total / 1e6:.1f} MB")
        print(f"store: moto S3 server on 127.0.0.1, {os.cpu_count()} cores; best of {args.repeats}\n")
        times: dict[str, list[float]] = {"s3fs put": [], "mm1data publish": [], "mm1data rerun": []}
        for r in range(args.repeats):
            peer = s3fs.S3FileSystem(skip_instance_cache=True)  # endpoint from AWS_ENDPOINT_URL
            t0 = time.perf_counter()
            peer.put(files, f"bench/peer-{r}/", batch_size=args.workers)
            times["s3fs put"].append(time.perf_counter() - t0)
            peer.rm(f"bench/peer-{r}", recursive=True)

            t0 = time.perf_counter()
            report = publish(src, f"s3://bench/mm1-{r}", workers=args.workers)
            times["mm1data publish"].append(time.perf_counter() - t0)
            assert len(report.uploaded) == args.shards
            t0 = time.perf_counter()
            again = publish(src, f"s3://bench/mm1-{r}", workers=args.workers)
            times["mm1data rerun"].append(time.perf_counter() - t0)
            assert len(again.skipped) == args.shards
            fs.rm(f"bench/mm1-{r}", recursive=True)
    server.stop()

    best = {k: min(v) for k, v in times.items()}
    print(f"| {'upload of the same files':<41} | {'seconds':>7} | {'MB/s':>6} |")
    print(f"|{'-' * 43}|{'-' * 8}:|{'-' * 7}:|")
    notes = {
        "s3fs put": "s3fs put (peer, unverified)",
        "mm1data publish": "mm1data publish (verified, manifest last)",
        "mm1data rerun": "mm1data publish rerun (all skipped)",
    }
    for k, secs in best.items():
        print(f"| {notes[k]:<41} | {secs:>7.2f} | {total / 1e6 / secs:>6.1f} |")
    print(f"\nmm1data publish / s3fs put throughput: {best['s3fs put'] / best['mm1data publish']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
