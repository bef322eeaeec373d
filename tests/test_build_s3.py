"""`mm1data build` with its input and its output on S3 (a real moto server on 127.0.0.1): the
checkpoints, shards, rejects and manifest all go to the bucket, a rerun resumes from the
checkpoints there, and the dataset verifies against its manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3

from mm1data.shards.format import verify as verify_dataset


def _build(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mm1data.cli", "build", "--log-json", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **env},
    )


def test_build_reads_and_writes_s3_and_resumes_there(s3_bucket, s3_env, repo_root):
    s3 = boto3.client("s3", endpoint_url=s3_env["endpoint"])
    source = repo_root / "sample" / "text" / "c4_sample.jsonl.gz"
    s3.upload_file(str(source), s3_bucket, "raw/c4_sample.jsonl.gz")
    out = f"s3://{s3_bucket}/built/v1"
    args = ["--mix", "text=1", "--text", f"s3://{s3_bucket}/raw/c4_sample.jsonl.gz", "--output", out]

    first = _build(*args, env=s3_env["env"])
    assert first.returncode == 0, first.stderr[-3000:]
    stats = json.loads(first.stdout.strip().splitlines()[-1])
    assert stats["streams"]["text"]["read"] == 30
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="built/v1/")["Contents"]}
    assert {"built/v1/manifest.json", "built/v1/stats.json", "built/v1/_work/tokenize/_SUCCESS"} <= keys
    assert any(k.startswith("built/v1/rejects/text/") for k in keys)
    assert not [k for k in keys if k.endswith(".partial")]
    assert verify_dataset(out, s3_env["endpoint"]) == []  # every shard matches the manifest

    again = _build(*args, env=s3_env["env"])
    assert again.returncode == 0, again.stderr[-3000:]
    events = [json.loads(line) for line in again.stderr.splitlines() if line.startswith("{")]
    resumed = [e["stage"] for e in events if e["event"].startswith("resumed")]
    assert resumed == ["ingest", "filter", "dedup", "tokenize", "plan", "write"]
    body = s3.get_object(Bucket=s3_bucket, Key="built/v1/manifest.json")["Body"].read()
    assert json.loads(body)["totals"] == stats["totals"]
