"""`mm1data publish` against a real moto S3 server on loopback, with real COCO images in real tars.

The fault test cuts the network in the middle of a publish with a small TCP proxy between the
client and moto (moto keeps running, so its state survives), watches the bucket from the side the
whole time, and checks that no manifest.json is ever visible before every shard is there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from mm1data.cli import main
from mm1data.errors import UsageError
from mm1data.io.fs import arrow_fs, fsspec_fs, register_webdataset_s3
from mm1data.shards.energon import metadata_paths
from mm1data.shards.format import MANIFEST, read_manifest, shard_name
from mm1data.shards.format import verify as verify_dataset
from mm1data.shards.publish import PublishError, publish
from tests.train.shards_helper import write_packed_dataset

MiB = 2**20
SHARD0, SHARD1, SHARD2, SHARD3 = (shard_name(0, i) for i in range(4))


def write_dataset(
    out: Path, shared: Path, n_shards: int = 4, per_shard: int = 3, first: int = 0, **kw
) -> Path:
    """A finished packed-v1 build of real COCO images, captions and Wikipedia text: ``n_shards`` tars
    with their ``.tar.idx``, the ``.nv-meta`` files, then manifest.json."""
    return write_packed_dataset(out, shared, n_shards=n_shards, seqs_per_shard=per_shard, first=first, **kw)


def escaping(manifest: dict) -> dict:
    """``manifest`` with its first shard's path pointing out of the dataset folder."""
    first = manifest["shards"][0] | {"path": "../etc/passwd.tar"}
    return manifest | {"shards": [first, *manifest["shards"][1:]]}


def names_of(n: int) -> list[str]:
    return [shard_name(0, i) for i in range(n)]


def s3_client(endpoint: str):
    """A boto3 client straight to moto (bypassing any proxy), to look at the bucket from the side."""
    return boto3.client("s3", endpoint_url=endpoint)


def has_key(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except client.exceptions.ClientError:
        return False


class TcpProxy:
    """A loopback TCP proxy to ``target``; ``stop()`` cuts every connection, ``start()`` listens again
    on the same port. Stands for the network between the publisher and the store."""

    def __init__(self, target: tuple[str, int], cut_after_bytes: int | None = None) -> None:
        self.target = target
        self.port = 0
        self.cut_after_bytes = cut_after_bytes  # stop by itself once this many bytes went upstream
        self.sent = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if upstream and self.cut_after_bytes is not None:
                    with self._lock:
                        self.sent += len(data)
                        cut = self.sent >= self.cut_after_bytes
                    if cut:
                        self.cut_after_bytes = None
                        self.stop()
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def dataset(tmp_path, shared_data) -> Path:
    return write_dataset(tmp_path / "build", shared_data)


def test_publish_then_read_back_byte_identical_with_s3fs_pyarrow_and_webdataset(dataset, s3_bucket):
    dest = f"s3://{s3_bucket}/runs/v1"
    report = publish(dataset, dest, workers=4)

    manifest = read_manifest(str(dataset))
    names = [s.path for s in manifest.shards]
    assert list(report.uploaded) == names and report.skipped == ()
    assert read_manifest(dest) == manifest
    assert verify_dataset(dest) == []

    fs, root = fsspec_fs(dest)
    pa_fs, pa_root = arrow_fs(dest)
    for name in [*names, *(f"{n}.idx" for n in names), *metadata_paths(), MANIFEST]:
        assert fs.cat_file(f"{root}/{name}") == (dataset / name).read_bytes()
    for name in names:
        local = (dataset / name).read_bytes()
        assert fs.cat_file(f"{root}/{name}") == local
        with pa_fs.open_input_file(f"{pa_root}/{name}") as f:
            assert f.read() == local
        assert fs.metadata(f"{root}/{name}")["sha256"] == hashlib.sha256(local).hexdigest()

    import webdataset as wds

    register_webdataset_s3()
    urls = [f"{dest}/{n}" for n in names]
    remote = [(s["__key__"], s["tokens.npy"], s["json"]) for s in wds.WebDataset(urls, shardshuffle=False)]
    local = [
        (s["__key__"], s["tokens.npy"], s["json"])
        for s in wds.WebDataset([str(dataset / n) for n in names], shardshuffle=False)
    ]
    assert len(remote) == 12 and remote == local


def test_large_shard_goes_up_as_multipart_upload_and_verifies(tmp_path, shared_data, s3_env, s3_bucket):
    build = write_dataset(
        tmp_path / "build", shared_data, n_shards=1, per_shard=90, image_size=480, jpeg_quality=95
    )
    size = (build / SHARD0).stat().st_size
    assert size > 10 * MiB  # above two 5 MiB parts

    publish(build, f"s3://{s3_bucket}/big", part_size=5 * MiB)

    head = s3_client(s3_env["endpoint"]).head_object(Bucket=s3_bucket, Key=f"big/{SHARD0}")
    parts = -(-size // (5 * MiB))
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # S3's multipart ETag: md5-of-md5s-<parts>
    assert head["ContentLength"] == size
    assert head["Metadata"]["sha256"] == hashlib.sha256((build / SHARD0).read_bytes()).hexdigest()
    assert verify_dataset(f"s3://{s3_bucket}/big") == []


@pytest.mark.parametrize("cut", ["after_two_shards_verified", "in_the_middle_of_a_shard_body"])
def test_network_cut_mid_publish_fails_clearly_never_shows_a_manifest_and_rerun_resumes(
    tmp_path, shared_data, s3_env, s3_bucket, monkeypatch, cut
):
    build = write_dataset(tmp_path / "build", shared_data, n_shards=6, per_shard=2)
    shards = read_manifest(str(build)).shards
    names = [s.path for s in shards]
    host, port = s3_env["endpoint"].removeprefix("http://").split(":")
    # the byte cut lands in the middle of a PUT body, after about two and a half shards went upstream
    cut_bytes = None
    if cut == "in_the_middle_of_a_shard_body":
        cut_bytes = sum(s.bytes for s in shards[:2]) + shards[2].bytes // 2
    proxy = TcpProxy((host, int(port)), cut_after_bytes=cut_bytes)
    proxy.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    side = s3_client(s3_env["endpoint"])
    dest = f"s3://{s3_bucket}/ds"

    # a reader polling from the side: whenever it sees manifest.json, every shard must be complete
    seen_incomplete: list[str] = []
    manifest_seen = threading.Event()
    stop_watch = threading.Event()
    sizes = {s.path: s.bytes for s in shards}

    def watch() -> None:
        watcher = s3_client(s3_env["endpoint"])
        while not stop_watch.is_set():
            if has_key(watcher, s3_bucket, f"ds/{MANIFEST}"):
                manifest_seen.set()
                listed = watcher.list_objects_v2(Bucket=s3_bucket, Prefix="ds/").get("Contents", [])
                stored = {o["Key"].removeprefix("ds/"): o["Size"] for o in listed}
                missing = [n for n in names if stored.get(n) != sizes[n]]
                if missing:
                    seen_incomplete.append(f"manifest visible while {missing} incomplete")
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    verified: list[str] = []

    def cut_after_two(event: str, name: str) -> None:
        assert not has_key(side, s3_bucket, f"ds/{MANIFEST}")
        verified.append(name)
        if cut == "after_two_shards_verified" and len(verified) == 2:
            proxy.stop()

    try:
        with pytest.raises(PublishError) as err:
            publish(build, dest, workers=2, progress=cut_after_two)
        message = str(err.value)
        assert "manifest.json was not written" in message and "rerun" in message
        assert not has_key(side, s3_bucket, f"ds/{MANIFEST}")
        assert len(verified) < len(names)
        if cut == "after_two_shards_verified":
            assert len(verified) >= 2

        proxy.start()  # the network is back
        events: list[tuple[str, str]] = []
        report = publish(build, dest, workers=2, progress=lambda e, n: events.append((e, n)))
    finally:
        stop_watch.set()
        watcher.join()
        proxy.stop()

    assert set(verified) <= set(report.skipped)  # verified before the cut: not uploaded again
    assert sorted(report.uploaded + report.skipped) == names
    assert events[-1] == ("manifest", MANIFEST)
    assert manifest_seen.is_set() and seen_incomplete == []
    assert verify_dataset(dest, endpoint_url=s3_env["endpoint"]) == []


def test_corrupted_or_truncated_remote_shards_are_reported_and_reuploaded(dataset, s3_env, s3_bucket):
    dest = f"s3://{s3_bucket}/ds"
    publish(dataset, dest)
    side = s3_client(s3_env["endpoint"])
    s0, s1, s2, s3 = names_of(4)
    good = (dataset / s1).read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # same size, wrong bytes
    side.put_object(Bucket=s3_bucket, Key=f"ds/{s1}", Body=bytes(flipped))
    side.put_object(Bucket=s3_bucket, Key=f"ds/{s2}", Body=good[:1000])
    side.delete_object(Bucket=s3_bucket, Key=f"ds/{s3}.idx")
    side.put_object(Bucket=s3_bucket, Key="ds/.nv-meta/split.yaml", Body=b"split_parts: {}")

    problems = verify_dataset(dest)
    assert problems == [
        f"{s1}: sha256 {hashlib.sha256(flipped).hexdigest()[:12]}… differs from the manifest's "
        f"{hashlib.sha256(good).hexdigest()[:12]}…",
        f"{s2}: 1000 bytes, manifest says {(dataset / s2).stat().st_size}",
        f"{s3}.idx: missing",
        ".nv-meta/split.yaml: differs from what the manifest gives",
    ]

    report = publish(dataset, dest)
    assert report.uploaded == (s1, s2, s3)
    assert report.skipped == (s0,)
    assert verify_dataset(dest) == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / MANIFEST).unlink(), "no manifest.json"),
        (lambda d: (d / SHARD1).unlink(), f"does not match its manifest: {SHARD1}: missing"),
        (lambda d: (d / SHARD2).write_bytes(b"x" * 10), f"{SHARD2}: 10 bytes, manifest says"),
        (
            lambda d: (d / SHARD3).write_bytes(bytes(reversed((d / SHARD3).read_bytes()))),
            f"{SHARD3}: sha256",
        ),
        (lambda d: (d / f"{SHARD1}.idx").unlink(), f"{SHARD1}.idx: missing"),
        (lambda d: (d / ".nv-meta/.info.json").write_text("{}"), ".nv-meta/.info.json: differs"),
        (
            lambda d: (d / MANIFEST).write_text(json.dumps(escaping(json.loads((d / MANIFEST).read_text())))),
            "not a safe relative path",
        ),
    ],
    ids=[
        "no_manifest",
        "missing_shard",
        "wrong_size",
        "wrong_hash",
        "no_tar_index",
        "bad_info",
        "path_escapes",
    ],
)
def test_source_that_does_not_match_its_manifest_is_refused_before_any_upload(
    dataset, s3_env, s3_bucket, damage, message
):
    damage(dataset)
    with pytest.raises(UsageError, match=message):
        publish(dataset, f"s3://{s3_bucket}/ds")
    assert "Contents" not in s3_client(s3_env["endpoint"]).list_objects_v2(Bucket=s3_bucket)


def test_destination_holding_a_different_dataset_is_refused(tmp_path, shared_data, s3_bucket):
    publish(write_dataset(tmp_path / "a", shared_data, n_shards=1), f"s3://{s3_bucket}/ds")
    other = write_dataset(tmp_path / "b", shared_data, n_shards=1, first=20)
    with pytest.raises(UsageError, match="already holds a different dataset"):
        publish(other, f"s3://{s3_bucket}/ds")


def test_cli_publish_prints_summary_exits_2_on_bad_input_and_never_leaks_secrets(
    dataset, s3_env, s3_bucket, monkeypatch, caplog
):
    secret, key_id = s3_env["env"]["AWS_SECRET_ACCESS_KEY"], s3_env["env"]["AWS_ACCESS_KEY_ID"]
    endpoint = s3_env["endpoint"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    ok = runner.invoke(main, ["publish", str(dataset), f"s3://{s3_bucket}/ds", "--endpoint-url", endpoint])
    assert ok.exit_code == 0, ok.output
    assert "4 shards uploaded, 0 already there" in ok.stdout and "all verified" in ok.stdout
    again = runner.invoke(main, ["publish", str(dataset), f"s3://{s3_bucket}/ds", "--endpoint-url", endpoint])
    assert again.exit_code == 0 and "0 shards uploaded, 4 already there" in again.stdout

    missing = runner.invoke(
        main, ["publish", str(dataset), "s3://no-such-bucket-mm1/ds", "--endpoint-url", endpoint]
    )
    assert missing.exit_code == 2 and "bucket 'no-such-bucket-mm1' does not exist" in missing.stderr

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with socket.socket() as s:  # a port nobody listens on: the store is unreachable
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = runner.invoke(main, ["publish", str(dataset), f"s3://{s3_bucket}/x", "--endpoint-url", dead])
    assert down.exit_code == 1 and down.stderr.startswith("error: publish to s3://")

    everything = "".join(r.stdout + r.stderr for r in (ok, again, missing, down)) + caplog.text
    assert secret not in everything
    ours = "".join(r.stdout + r.stderr for r in (ok, again, missing, down))
    ours += "".join(r.getMessage() for r in caplog.records if r.name.startswith("mm1data"))
    assert key_id not in ours


def test_verify_dataset_on_a_local_folder_names_each_damaged_shard(dataset):
    assert verify_dataset(str(dataset)) == []
    (dataset / SHARD0).unlink()
    blob = bytearray((dataset / SHARD3).read_bytes())
    blob[-700] ^= 1
    (dataset / SHARD3).write_bytes(bytes(blob))
    problems = verify_dataset(str(dataset))
    assert problems[0] == f"{SHARD0}: missing"
    assert problems[1].startswith(f"{SHARD3}: sha256") and len(problems) == 2


def test_reading_a_dataset_without_manifest_or_publishing_to_a_non_s3_url_is_a_usage_error(dataset, tmp_path):
    with pytest.raises(UsageError, match="no manifest.json"):
        read_manifest(str(tmp_path))
    with pytest.raises(UsageError, match="destination must be s3://"):
        publish(dataset, str(tmp_path / "elsewhere"))
