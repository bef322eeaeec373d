"""Publish a finished local build to S3, verified, with ``manifest.json`` last; verify a published dataset.

A dataset is complete exactly when its ``manifest.json`` exists, so :func:`publish` uploads the
shards first (in parallel threads; a shard of at least two parts goes up as an S3 multipart upload
of :data:`PART_SIZE` parts), re-reads each one from the store and checks its size and sha256
against the manifest, and only when every shard is verified uploads ``manifest.json`` (and
verifies it too). A reader that trusts only the manifest therefore never sees a partial dataset.

Rerunning a publish that died (network cut, killed process) is the way to resume: a shard already
in the store with the manifest's size and sha256 (re-hashed from the stored bytes, not taken from
metadata) is skipped, anything else (missing, truncated, corrupted) is uploaded again. The
sha256 is also stored as object metadata ``x-amz-meta-sha256`` for other tools.

:func:`read_manifest` and :func:`verify_dataset` read a dataset (local folder or ``s3://`` prefix)
the same way for ``mm1data inspect dataset --verify``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mm1data.errors import UsageError
from mm1data.io.fs import fsspec_fs, is_s3, redact
from mm1data.io.safety import UnsafeName, safe_member_name

MANIFEST = "manifest.json"
PART_SIZE = 16 * 2**20  # multipart part size; files of >= 2 parts go up as multipart uploads
PART_CONCURRENCY = 2  # parts in flight per file (memory: workers x this x PART_SIZE)
READ_BLOCK = 8 * 2**20

ProgressFn = Callable[[str, str], None]


class PublishError(Exception):
    """The store failed during a publish (network, permissions mid-way, verification).

    Nothing was marked complete: ``manifest.json`` was not written. Rerun the same command to resume.
    """


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it."""

    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class PublishReport:
    """What a publish did: shards uploaded and skipped (already there, verified), bytes and time."""

    dest: str
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]
    bytes_uploaded: int
    bytes_total: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        """Uploaded megabytes (10^6) per second of wall time, verification included."""
        return self.bytes_uploaded / 1e6 / self.seconds if self.seconds > 0 else 0.0


def sha256_stream(f: BinaryIO, block: int = READ_BLOCK) -> tuple[str, int]:
    """``(hex sha256, bytes)`` of a binary stream read to its end."""
    h, n = hashlib.sha256(), 0
    while chunk := f.read(block):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def shard_entries(manifest: dict[str, Any], where: str) -> list[ShardEntry]:
    """The manifest's ``shards`` as :class:`ShardEntry`; UsageError if the list is missing or malformed."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise UsageError(f"{where}: manifest has no `shards` list")
    entries = []
    for i, s in enumerate(shards):
        try:
            entry = ShardEntry(str(s["path"]), int(s["bytes"]), str(s["sha256"]).lower())
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{where}: shards[{i}] needs path, bytes and sha256 ({e})") from e
        entries.append(entry)
    return entries


def _parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{where}: manifest.json is not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise UsageError(f"{where}: manifest.json is not a JSON object")
    return manifest


def read_manifest(url: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """The ``manifest.json`` of a dataset (local folder or ``s3://bucket/prefix``), parsed.

    Raises UsageError when it is missing (an unfinished or unpublished dataset) or not a manifest.
    """
    fs, root = fsspec_fs(url, endpoint_url)
    try:
        raw = fs.cat_file(f"{root}/{MANIFEST}")
    except FileNotFoundError as e:
        raise UsageError(f"no {MANIFEST} in {redact(url)} (an unfinished or unpublished dataset?)") from e
    except OSError as e:
        raise UsageError(f"cannot read {redact(url)}/{MANIFEST}: {redact(e)}") from e
    manifest = _parse_manifest(raw, redact(url))
    shard_entries(manifest, redact(url))
    return manifest


def _shard_url_path(fs: Any, root: str, path: str, endpoint_url: str | None) -> tuple[Any, str]:
    if "://" in path:
        return fsspec_fs(path, endpoint_url)
    return fs, f"{root}/{path}"


def _check_one(fs: Any, path: str, entry: ShardEntry) -> str | None:
    """A problem with one stored shard, or None when its size and sha256 match the manifest."""
    try:
        size = int(fs.size(path))
    except FileNotFoundError:
        return f"{entry.path}: missing"
    if size != entry.bytes:
        return f"{entry.path}: {size} bytes, manifest says {entry.bytes}"
    with fs.open(path, "rb", block_size=READ_BLOCK) as f:
        digest, n = sha256_stream(f)
    if n != entry.bytes:
        return f"{entry.path}: read {n} bytes, manifest says {entry.bytes}"
    if digest != entry.sha256:
        return f"{entry.path}: sha256 {digest[:12]}… differs from the manifest's {entry.sha256[:12]}…"
    return None


def verify_dataset(url: str, endpoint_url: str | None = None, workers: int = 8) -> list[str]:
    """Re-hash every shard of a dataset against its manifest; one line per problem, [] when all match.

    Works on a local folder or an ``s3://`` prefix. Raises UsageError when there is no manifest.
    """
    manifest = read_manifest(url, endpoint_url)
    fs, root = fsspec_fs(url, endpoint_url)
    entries = shard_entries(manifest, redact(url))

    def check(entry: ShardEntry) -> str | None:
        try:
            sfs, path = _shard_url_path(fs, root, entry.path, endpoint_url)
            return _check_one(sfs, path, entry)
        except OSError as e:
            return f"{entry.path}: cannot read ({redact(e)})"

    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        return [p for p in pool.map(check, entries) if p]


def check_local_build(src_dir: str | os.PathLike[str], workers: int = 8) -> tuple[bytes, list[ShardEntry]]:
    """``(manifest bytes, shards)`` of a finished local build whose files all match its manifest.

    Raises UsageError when ``src_dir`` is not a folder, has no ``manifest.json``, or a listed shard
    is not a safe relative path, is missing, or differs from the manifest in size or sha256.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise UsageError(f"publish: {src} is not a folder")
    mpath = src / MANIFEST
    if not mpath.is_file():
        raise UsageError(f"publish: no {MANIFEST} in {src} (not a finished `mm1data build` output)")
    raw = mpath.read_bytes()
    entries = shard_entries(_parse_manifest(raw, str(src)), str(src))
    if not entries:
        raise UsageError(f"publish: {mpath} lists no shards")
    if len({e.path for e in entries}) != len(entries):
        raise UsageError(f"publish: {mpath} lists a shard path twice")
    for e in entries:
        try:
            clean = safe_member_name(e.path)
        except UnsafeName as err:
            raise UsageError(
                f"publish: manifest shard path {e.path!r} is not a safe relative path ({err})"
            ) from err
        if clean != e.path or clean == MANIFEST:
            raise UsageError(f"publish: manifest shard path {e.path!r} is not a plain relative path")
        if not (src / e.path).is_file():
            raise UsageError(f"publish: shard {e.path} listed in the manifest is missing from {src}")
        size = (src / e.path).stat().st_size
        if size != e.bytes:
            raise UsageError(f"publish: {e.path} has {size} bytes, the manifest says {e.bytes}")

    def local_hash(e: ShardEntry) -> str:
        with open(src / e.path, "rb") as f:
            return sha256_stream(f)[0]

    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        for e, digest in zip(entries, pool.map(local_hash, entries), strict=True):
            if digest != e.sha256:
                raise UsageError(f"publish: {e.path} sha256 {digest[:12]}… differs from the manifest's")
    return raw, entries


def _split(url_path: str) -> tuple[str, str]:
    bucket, _, key = url_path.partition("/")
    return bucket, key


def _preflight(fs: Any, root: str, dest: str) -> None:
    """Fail fast with one line when the bucket does not exist or cannot be reached."""
    bucket, _ = _split(root)
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError as e:
        raise UsageError(f"publish: bucket {bucket!r} does not exist") from e
    except PermissionError as e:
        raise UsageError(f"publish: access to bucket {bucket!r} denied ({redact(e)})") from e
    except Exception as e:  # noqa: BLE001 - connection errors of every kind from botocore/aiohttp
        raise PublishError(f"publish to {redact(dest)}: cannot reach the store ({redact(e)})") from e


def publish(
    src_dir: str | os.PathLike[str],
    dest_url: str,
    endpoint_url: str | None = None,
    workers: int = 8,
    part_size: int = PART_SIZE,
    progress: ProgressFn | None = None,
) -> PublishReport:
    """Upload the local build ``src_dir`` to ``dest_url`` (``s3://bucket/prefix``): shards, then manifest.

    Each shard is uploaded (multipart when at least ``2 * part_size`` bytes) unless the store already
    holds it with the manifest's size and sha256, then re-read and verified; ``manifest.json`` goes
    up only after all shards verified. ``progress(event, name)`` is called with ``"skipped"`` or
    ``"uploaded"`` per verified shard and ``"manifest"`` at the end (from worker threads).

    Raises UsageError for a bad source (see :func:`check_local_build`), a non-``s3://`` destination,
    a missing bucket, or a destination that already holds a different manifest; PublishError when the
    store fails mid-way (the first shard failure stops the rest; rerun to resume).
    """
    if not is_s3(dest_url):
        raise UsageError(f"publish: destination must be s3://bucket/prefix, got {redact(dest_url)!r}")
    if workers < 1:
        raise UsageError("publish: --workers must be at least 1")
    if part_size < 5 * 2**20:
        raise UsageError("publish: the S3 part size must be at least 5 MiB")
    t0 = time.perf_counter()
    src = Path(src_dir)
    manifest_raw, entries = check_local_build(src, workers)
    fs, root = fsspec_fs(dest_url, endpoint_url)
    if not _split(root)[0]:
        raise UsageError(f"publish: no bucket in {redact(dest_url)!r}")
    _preflight(fs, root, dest_url)
    manifest_key = f"{root}/{MANIFEST}"
    try:
        remote_manifest = fs.cat_file(manifest_key)
    except FileNotFoundError:
        remote_manifest = None
    except Exception as e:  # noqa: BLE001
        raise PublishError(f"publish to {redact(dest_url)}: cannot read the store ({redact(e)})") from e
    if remote_manifest is not None and remote_manifest != manifest_raw:
        raise UsageError(
            f"publish: {redact(dest_url)} already holds a different dataset (its manifest.json differs); "
            "publish to a new prefix or delete it first"
        )

    def put_verified(entry: ShardEntry) -> bool:
        """Make the stored shard match the manifest; True when it had to be uploaded."""
        key = f"{root}/{entry.path}"
        if _check_one(fs, key, entry) is None:
            if progress:
                progress("skipped", entry.path)
            return False
        fs.put_file(
            str(src / entry.path),
            key,
            chunksize=part_size,
            max_concurrency=PART_CONCURRENCY,
            Metadata={"sha256": entry.sha256},
        )
        problem = _check_one(fs, key, entry)
        if problem:
            raise PublishError(f"verification after upload failed: {problem}")
        if progress:
            progress("uploaded", entry.path)
        return True

    uploaded, skipped = _run_all(put_verified, entries, workers, dest_url)
    if remote_manifest is None:
        try:
            fs.pipe_file(manifest_key, manifest_raw, ContentType="application/json")
            stored = fs.cat_file(manifest_key)
        except Exception as e:  # noqa: BLE001
            raise PublishError(
                f"publish to {redact(dest_url)}: writing manifest.json failed ({redact(e)})"
            ) from e
        if stored != manifest_raw:
            raise PublishError(
                f"publish to {redact(dest_url)}: manifest.json read back differs from the local one"
            )
    if progress:
        progress("manifest", MANIFEST)
    by_path = {e.path: e for e in entries}
    return PublishReport(
        dest=redact(dest_url),
        uploaded=tuple(uploaded),
        skipped=tuple(skipped),
        bytes_uploaded=sum(by_path[p].bytes for p in uploaded)
        + (len(manifest_raw) if remote_manifest is None else 0),
        bytes_total=sum(e.bytes for e in entries) + len(manifest_raw),
        seconds=time.perf_counter() - t0,
    )


def _run_all(
    work: Callable[[ShardEntry], bool], entries: Iterable[ShardEntry], workers: int, dest: str
) -> tuple[list[str], list[str]]:
    """Run ``work`` over the shards in a thread pool; stop at the first failure with PublishError."""
    entries = list(entries)
    uploaded: list[str] = []
    skipped: list[str] = []
    failed = threading.Event()

    def guarded(entry: ShardEntry) -> bool:
        if failed.is_set():
            raise cf.CancelledError
        try:
            return work(entry)
        except BaseException:
            failed.set()
            raise

    errors: list[tuple[str, BaseException]] = []
    with cf.ThreadPoolExecutor(workers, thread_name_prefix="mm1data-publish") as pool:
        futures = {pool.submit(guarded, e): e for e in entries}
        for fut in cf.as_completed(futures):
            entry = futures[fut]
            try:
                (uploaded if fut.result() else skipped).append(entry.path)
            except cf.CancelledError:
                pass
            except Exception as e:  # noqa: BLE001 - reported below, with the count
                errors.append((entry.path, e))
    if errors:
        path, first = errors[0]
        done = len(uploaded) + len(skipped)
        raise PublishError(
            f"publish to {redact(dest)} incomplete: {done} of {len(entries)} shards verified, "
            f"{len(errors)} failed (first: {path}: {redact(first)}); manifest.json was not written, "
            "rerun the same command to resume"
        ) from first
    order = {e.path: i for i, e in enumerate(entries)}
    return sorted(uploaded, key=order.get), sorted(skipped, key=order.get)
