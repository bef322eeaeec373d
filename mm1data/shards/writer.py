"""Assemble packed sequences and write them as deterministic WebDataset tars (``mm1data/packed-v1``).

One sample per sequence, keyed by :func:`~mm1data.shards.format.sample_key`, with the members
of :mod:`mm1data.shards.format`. The tar is streamed to storage a sample at a time, with fixed
mtime, uid, gid, mode and owner names, members sorted per sample, so the same plan gives the same
bytes on any worker; its Energon ``.tar.idx`` (sample offsets) is computed while writing and
stored beside it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.shards.format import (
    ARRAYS,
    MANIFEST,
    META,
    Header,
    ShardEntry,
    Totals,
    atomic_write,
    image_member,
    npy_bytes,
    pack_tar_index,
    sample_key,
    tar_index_name,
    write_manifest,
)

MTIME = 0  # every tar member: 1970-01-01, uid/gid 0, mode 0644, no owner names


def assemble(examples: list[dict], seq_len: int, pad_id: int) -> dict[str, bytes]:
    """The members of one sequence from its examples in order (rows of the EXAMPLE schema)."""
    tokens = np.full(seq_len, pad_id, dtype=np.int32)
    segment_ids = np.zeros(seq_len, dtype=np.int32)
    positions = np.zeros(seq_len, dtype=np.int32)
    loss_mask = np.zeros(seq_len, dtype=np.uint8)
    meta: dict = {"examples": [], "images": []}
    jpegs: list[bytes] = []
    at = 0
    for k, ex in enumerate(examples):
        toks = np.frombuffer(ex["tokens"], dtype="<i4")
        n = len(toks)
        if at + n > seq_len:
            raise ValueError(f"sequence overflow: {at} + {n} > {seq_len}")
        tokens[at : at + n] = toks
        segment_ids[at : at + n] = k + 1
        positions[at : at + n] = np.arange(n, dtype=np.int32)
        loss_mask[at : at + n] = np.frombuffer(ex["loss_mask"], dtype=np.uint8)
        first = len(meta["images"])
        slot_len = ex.get("slot_len")
        for start, jpeg in zip(ex["image_starts"] or [], ex["images"] or [], strict=True):
            meta["images"].append({"slot_start": at + int(start), "slot_len": slot_len, "example": k})
            jpegs.append(jpeg)
        meta["examples"].append(
            {
                "stream": ex["stream"],
                "id": ex["id"],
                "part": ex["part"],
                "lineage": ex["lineage"],
                "span": [at, at + n],
                "images": list(range(first, len(meta["images"]))),
            }
        )
        at += n
    arrays = {"tokens": tokens, "segment_ids": segment_ids, "positions": positions, "loss_mask": loss_mask}
    members = {META: json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()}
    for member, dtype in ARRAYS.items():
        members[member] = npy_bytes(arrays[member.removesuffix(".npy")].astype(dtype, copy=False))
    for i, jpeg in enumerate(jpegs):
        members[image_member(i)] = jpeg
    return members


class _Tally(io.RawIOBase):
    """A write-only file that passes bytes on to ``f`` while counting and hashing them."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.size, self.sha256 = f, 0, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.f.write(b)
        self.sha256.update(b)
        n = memoryview(b).nbytes
        self.size += n
        return n

    def tell(self) -> int:
        return self.size


def write_tar(samples: Iterable[tuple[str, dict[str, bytes]]], f: BinaryIO) -> bytes:
    """Write a tar of ``(key, {extension: bytes})`` samples in order to ``f`` (members sorted,
    metadata fixed), one sample in memory at a time; return its Energon ``.tar.idx`` (each sample's
    first header offset, then the end-of-archive offset), byte-identical to what ``energon
    prepare`` derives from the tar."""
    offsets = []
    with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            offsets.append(tar.offset)
            for ext in sorted(members):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
        offsets.append(tar.offset)
    return pack_tar_index(offsets)


def tar_bytes(samples: Iterable[tuple[str, dict[str, bytes]]]) -> tuple[bytes, bytes]:
    """``(tar, tar index)`` of :func:`write_tar`, the tar held in memory (small tars only)."""
    buf = io.BytesIO()
    index = write_tar(samples, buf)
    return buf.getvalue(), index


def put_shard(output: str, name: str, tar: bytes, tar_index: bytes) -> None:
    """Store ``output/<name>`` and ``output/<name>.idx`` from bytes in memory; see :func:`write_shard`."""
    write_shard(output, name, [], tar=tar, tar_index=tar_index)


def write_shard(
    output: str,
    name: str,
    samples: Iterable[tuple[str, dict[str, bytes]]],
    *,
    tar: bytes | None = None,
    tar_index: bytes | None = None,
) -> tuple[int, str]:
    """Stream the tar of ``samples`` (or the given ``tar`` and ``tar_index``) to ``output/<name>``
    and its index to ``output/<name>.idx``, each whole or not at all, the index first; returns the
    tar's ``(bytes, sha256)``. Locally the tar is written beside as ``.partial`` and renamed; on S3
    it is spooled to a local temporary file and uploaded once its index is stored (an object
    appears only when its upload completes). Memory holds one sample, not the shard."""
    from mm1data.io.fs import fsspec_fs, is_s3

    fs, root = fsspec_fs(output)
    path = f"{root}/{name}"
    s3 = is_s3(output)
    if not s3:
        fs.makedirs(root, exist_ok=True)
    try:
        with tempfile.TemporaryFile() if s3 else fs.open(f"{path}.partial", "wb") as raw:
            tally = _Tally(raw)
            if tar is None:
                tar_index = write_tar(samples, tally)
            else:
                tally.write(tar)
            if s3:
                fs.pipe_file(tar_index_name(path), tar_index)
                raw.seek(0)
                with fs.open(path, "wb") as out:
                    shutil.copyfileobj(raw, out, COPY_BYTES)
    except BaseException:
        if not s3 and fs.exists(f"{path}.partial"):
            fs.rm(f"{path}.partial")
        raise
    if not s3:
        fs.pipe_file(f"{tar_index_name(path)}.partial", tar_index)
        fs.mv(f"{tar_index_name(path)}.partial", tar_index_name(path))
        fs.mv(f"{path}.partial", path)
    return tally.size, tally.sha256.hexdigest()


COPY_BYTES = 8 << 20
"""Bytes per read when a spooled shard is uploaded."""


SHARD_STATS = pa.schema(
    [
        pa.field("shard_part", pa.int32()),  # plan partition
        pa.field("shard_index", pa.int32()),  # shard within the partition
        pa.field("path", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("sequences", pa.int64()),
        pa.field("images", pa.int64()),
        pa.field("tokens", pa.string()),  # JSON {stream: non-pad tokens}
        pa.field("examples", pa.string()),  # JSON {stream: examples}
        pa.field("mix", pa.string()),  # JSON {mix group: weight in the mix unit}
        pa.field("full", pa.bool_()),  # False: its partition's last shard, short of shard_size
        pa.field("resumed", pa.bool_()),  # written by an earlier run of the same plan
    ]
)
"""What the write phase reports per shard (and keeps in its marker under ``_work/shards``)."""


def shard_samples(
    shard: pa.Table, part: int, index: int, seq_len: int, pad_id: int, slot_len: int
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of one shard from its placed examples (a table of ``seq``, ``slot`` and the
    EXAMPLE payload, sorted by ``seq`` then ``slot``). Rows become Python objects one sequence at
    a time."""
    seqs = shard.column("seq").to_numpy()
    starts = np.flatnonzero(np.r_[True, seqs[1:] != seqs[:-1]]).tolist()
    for a, b in zip(starts, [*starts[1:], len(seqs)], strict=True):
        examples = shard.slice(a, b - a).to_pylist()
        for r in examples:
            r["slot_len"] = slot_len
        yield sample_key(part, index, int(seqs[a])), assemble(examples, seq_len, pad_id)


def shard_counts(light: pa.Table) -> dict:
    """Sequences, images, and tokens and examples per stream of one shard, from its ``seq``,
    ``stream``, ``n_tokens`` and ``n_images`` columns."""
    tokens: dict[str, int] = {}
    examples: dict[str, int] = {}
    meta = light.select(["stream", "n_tokens"]).to_pydict()
    for stream, n in zip(meta["stream"], meta["n_tokens"], strict=True):
        tokens[stream] = tokens.get(stream, 0) + n
        examples[stream] = examples.get(stream, 0) + 1
    return {
        "sequences": len(pc.unique(light.column("seq"))),
        "images": int(pc.sum(light.column("n_images")).as_py() or 0),
        "tokens": tokens,
        "examples": examples,
    }


def shard_entry(row: dict, mix: dict[str, float], full: bool) -> ShardEntry:
    """The manifest entry of a shard from its :data:`SHARD_STATS` row, its realized mix and whether
    it is a full shard (False for the last, possibly short, shard of a plan partition)."""
    return ShardEntry(
        path=row["path"],
        bytes=int(row["bytes"]),
        sha256=row["sha256"],
        sequences=int(row["sequences"]),
        images=int(row["images"]),
        tokens=json.loads(row["tokens"]) if isinstance(row["tokens"], str) else dict(row["tokens"]),
        examples=json.loads(row["examples"]) if isinstance(row["examples"], str) else dict(row["examples"]),
        mix={k: round(v, 6) for k, v in mix.items()},
        full=full,
    )


def finish_dataset(
    output: str,
    header: Header,
    shards: Iterable[ShardEntry],
    attainable_fill: float | None = None,
    before_commit: Callable[[Totals], None] | None = None,
) -> Totals:
    """End a dataset whose shards are written: one pass over its shard entries (sorted by path; an
    iterator is enough, memory does not grow with them) writes the ``.nv-meta`` files Energon reads
    and ``manifest.json``. The ``.nv-meta`` files are committed first; then ``before_commit(totals)``
    runs (e.g. to write ``stats.json``); then ``manifest.json`` appears, last, meaning complete.
    Returns the manifest's totals."""
    from mm1data.shards.energon import EnergonMetadata

    with atomic_write(f"{output.rstrip('/')}/{MANIFEST}") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
        with EnergonMetadata(output) as meta:

            def entries() -> Iterator[ShardEntry]:
                for e in shards:
                    meta.add(e.path, e.sequences)
                    yield e

            totals = write_manifest(text, header, entries(), attainable_fill)
        text.flush()
        text.detach()
        if before_commit:
            before_commit(totals)
    return totals
