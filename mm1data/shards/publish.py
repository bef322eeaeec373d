"""Publish a finished local build to S3, verified, with ``manifest.json`` last.

A dataset is complete exactly when its ``manifest.json`` exists, so :func:`publish` first checks
the local build against its manifest (:func:`mm1data.shards.format.verify`: every shard's size,
sha256 and ``.tar.idx``, and the ``.nv-meta`` files), then uploads the shards with their
``.tar.idx`` (in parallel threads; a shard of at least two parts goes up as an S3 multipart upload
of :data:`PART_SIZE` parts), re-reads each one from the store and checks it against the manifest,
then uploads and reads back the Energon ``.nv-meta`` files, and only then uploads ``manifest.json``
(and verifies it too). A reader that trusts only the manifest therefore never sees a partial dataset.

Rerunning a publish that died (network cut, killed process) is the way to resume: a shard already
in the store with the manifest's size and sha256 and the right ``.tar.idx`` (re-hashed from the
stored bytes, not taken from metadata) is skipped, anything else (missing, truncated, corrupted)
is uploaded again. The sha256 is also stored as object metadata ``x-amz-meta-sha256`` for other tools.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm1data.errors import UsageError
from mm1data.io.fs import fsspec_fs, is_s3, redact
from mm1data.shards.energon import energon_metadata
from mm1data.shards.format import MANIFEST, Manifest, ShardEntry, verify, verify_shard

PART_SIZE = 16 * 2**20  # multipart part size; files of >= 2 parts go up as multipart uploads
PART_CONCURRENCY = 2  # parts in flight per file (memory: workers x this x PART_SIZE)

ProgressFn = Callable[[str, str], None]


class PublishError(Exception):
    """The store failed during a publish (network, permissions mid-way, verification).

    Nothing was marked complete: ``manifest.json`` was not written. Rerun the same command to resume.
    """


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


def check_local_build(src_dir: str | os.PathLike[str], workers: int = 8) -> tuple[bytes, Manifest]:
    """``(manifest bytes, manifest)`` of a finished local build whose files all match its manifest.

    Raises UsageError when ``src_dir`` is not a folder, has no valid ``manifest.json`` (shard paths
    must be safe relative paths), lists no shard, or a shard, its ``.tar.idx`` or an ``.nv-meta``
    file is missing or differs from what the manifest says.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise UsageError(f"publish: {src} is not a folder")
    mpath = src / MANIFEST
    if not mpath.is_file():
        raise UsageError(f"publish: no {MANIFEST} in {src} (not a finished `mm1data build` output)")
    raw = mpath.read_bytes()
    try:
        manifest = Manifest.read(raw, str(mpath))
    except UsageError as e:
        raise UsageError(f"publish: {e}") from e
    if not manifest.shards:
        raise UsageError(f"publish: {mpath} lists no shards")
    problems = verify(str(src), manifest=manifest, workers=workers)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise UsageError(f"publish: {src} does not match its manifest: {problems[0]}{more}")
    return raw, manifest


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
    """Upload the local build ``src_dir`` to ``dest_url`` (``s3://bucket/prefix``): shards with their
    ``.tar.idx``, then the ``.nv-meta`` files, then the manifest.

    Each shard is uploaded (multipart when at least ``2 * part_size`` bytes) unless the store already
    holds it and its index matching the manifest, then re-read and verified; ``manifest.json`` goes
    up only after all shards and the Energon metadata verified. ``progress(event, name)`` is called
    with ``"skipped"`` or ``"uploaded"`` per verified shard and ``"manifest"`` at the end (from
    worker threads).

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
    manifest_raw, manifest = check_local_build(src, workers)
    entries = list(manifest.shards)
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
        """Make the stored shard and its index match the manifest; True when they had to be uploaded."""
        if not verify_shard(fs, root, entry):
            if progress:
                progress("skipped", entry.path)
            return False
        fs.pipe_file(f"{root}/{entry.tar_index}", (src / entry.tar_index).read_bytes())
        fs.put_file(
            str(src / entry.path),
            f"{root}/{entry.path}",
            chunksize=part_size,
            max_concurrency=PART_CONCURRENCY,
            Metadata={"sha256": entry.sha256},
        )
        problems = verify_shard(fs, root, entry)
        if problems:
            raise PublishError(f"verification after upload failed: {problems[0]}")
        if progress:
            progress("uploaded", entry.path)
        return True

    uploaded, skipped = _run_all(put_verified, entries, workers, dest_url)
    meta_bytes = 0
    for name, data in energon_metadata(manifest).items():
        key = f"{root}/{name}"
        try:
            stored = fs.cat_file(key) if fs.exists(key) else None
            if stored != data:
                fs.pipe_file(key, data)
                meta_bytes += len(data)
                stored = fs.cat_file(key)
        except Exception as e:  # noqa: BLE001
            raise PublishError(f"publish to {redact(dest_url)}: writing {name} failed ({redact(e)})") from e
        if stored != data:
            raise PublishError(f"publish to {redact(dest_url)}: {name} read back differs from the local one")
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
        + meta_bytes
        + (len(manifest_raw) if remote_manifest is None else 0),
        bytes_total=manifest.totals.bytes + len(manifest_raw),
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
