"""Shared fixtures: one Ray session for the whole test run, and the shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent


def _shared_data() -> Path | None:
    env = os.environ.get("MM1DATA_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "data-candidates", REPO / "shared" / "data-candidates"]
    for c in candidates:
        if (c / "SOURCES.md").is_file():
            return c
    return None


SHARED = _shared_data()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data-candidates (real data kept out of the package for licence reasons)."""
    if SHARED is None:
        pytest.fail("shared real data not found: set MM1DATA_SHARED_DATA or put shared/ beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray session shared by all tests (ray.init costs seconds and ~1 GB)."""
    import ray

    from mm1data.runners.ray_session import configure_data_context

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=1024**3,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
    configure_data_context(quiet=True)
    yield ray
    # left running: pytest exits the process, and other session fixtures may still use it


REFERENCE_BUILD = {"shard_size": 1, "seq_len": 1024}
"""`mm1data build --mix 45:45:10 --shard-size 1 --seq-len 1024`: several small shards."""


def output_files(out: Path) -> dict[str, bytes]:
    """Everything a build publishes (shards and their ``.tar.idx``, ``.nv-meta``, manifest, rejects),
    by path; not stats or ``_work``."""
    files = [
        *sorted(out.glob("shard-*.tar")),
        *sorted(out.glob("shard-*.tar.idx")),
        *sorted(out.glob(".nv-meta/*")),
        out / "manifest.json",
        *sorted(out.glob("rejects/*/*.parquet")),
    ]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.fixture(scope="session")
def sample_reference_build(ray_local, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted local build of the bundled sample (``REFERENCE_BUILD``) that resumed,
    cluster and fuzzed builds are compared with: (output folder, stats)."""
    import dataclasses

    from mm1data.build import run_build
    from mm1data.config import SAMPLE_RECIPE, BuildConfig, load_recipe

    out = tmp_path_factory.mktemp("reference") / "out"
    recipe = load_recipe(SAMPLE_RECIPE)
    stats = run_build(dataclasses.replace(recipe, build=BuildConfig(**REFERENCE_BUILD)), str(out))
    return out, stats


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO


# --- S3: a real moto server on loopback ------------------------------------------------------------

S3_TEST_KEY_ID = "AKIAMM1DATATESTKEY01"
S3_TEST_SECRET = "mm1data-test-secret-Zq8wX3vT5pL9nR2k"
# Fake credentials for the whole session, set at import so that no test can reach a real account
# with the developer's own, and so that Ray workers (started by the first test that needs Ray,
# whose environment they copy) sign their S3 requests to moto too.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": S3_TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_var, None)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session: ``{"endpoint": URL, "env": {...}}``.

    ``env`` holds fake credentials and the endpoint (``AWS_ENDPOINT_URL``); tests apply it with
    ``monkeypatch.setenv`` (see ``s3_env``). moto keeps its state in memory until it is stopped.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": S3_TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    yield {"endpoint": endpoint, "env": env}
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The moto server's endpoint and fake credentials in the environment of one test."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    for k, v in s3_server["env"].items():
        monkeypatch.setenv(k, v)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env, request) -> str:
    """A fresh, empty bucket on the moto server (environment set by ``s3_env``); yields its name."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_env["endpoint"]).create_bucket(Bucket=bucket)
    return bucket
