"""Read ``mm1data/packed-v1`` datasets: a deterministic, resumable, rank- and worker-split loader.

The order of sequences is a pure function of the seed: each epoch permutes the shards and, inside
each shard, its sequences. Training step ``s`` consumes the global order positions
``[cursor + s·G, cursor + (s+1)·G)`` (``G`` = global batch); rank ``r`` of ``W`` takes the ``r``-th
``G/W`` slice of that window, cut into micro-batches that DataLoader workers take in turn. The
loader state is one integer, the global cursor, so a checkpoint resumes exactly with any world
size that divides ``G``: nothing is seen twice and nothing is skipped.

Samples are read by random access: each shard's tar is memory-mapped and indexed once (member
offsets from the headers), a sample's members are zero-copy views of it, and a micro-batch's JPEGs
are decoded by libjpeg-turbo straight into one preallocated image array. ``s3://`` (or any fsspec
URL) shards are first copied whole into a local cache checked against the manifest's sha256.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import simplejpeg
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mm1data.errors import UsageError
from mm1data.shards.format import (
    ARRAYS,
    META,
    Manifest,
    image_member,
    load_array,
    mix_group,
    read_manifest,
    split_key,
)

EMPTY_BLOCK = bytes(512)


@dataclass(frozen=True)
class Shard:
    """One tar of a dataset: where it is, how many sequences it holds, its sha256 from the manifest."""

    url: str
    sequences: int
    sha256: str | None = None


@dataclass(frozen=True)
class PackedDataset:
    """A packed dataset as its manifest describes it."""

    root: str
    seq_len: int
    image_tokens: int
    image_size: int
    max_images: int
    vocab_size: int
    special_tokens: dict[str, int]
    streams: tuple[str, ...]
    shards: tuple[Shard, ...]
    manifest: Manifest

    @property
    def sequences(self) -> int:
        """Sequences in one epoch."""
        return sum(s.sequences for s in self.shards)


def open_dataset(root: str) -> PackedDataset:
    """Read and check ``root/manifest.json`` (local folder or fsspec URL such as ``s3://bucket/prefix``).

    The shards are the manifest's list, in its order; ``streams`` are the manifest's mix names (the
    per-stream loss is logged under the same names)."""
    root = root.rstrip("/")
    manifest = read_manifest(root)
    shards = tuple(Shard(f"{root}/{s.path}", s.sequences, s.sha256) for s in manifest.shards)
    streams = manifest.streams or tuple(sorted({mix_group(k, ()) for s in manifest.shards for k in s.tokens}))
    ds = PackedDataset(
        root=root,
        seq_len=manifest.seq_len,
        image_tokens=manifest.image_tokens,
        image_size=manifest.image_size,
        max_images=manifest.max_images,
        vocab_size=manifest.tokenizer.vocab_size,
        special_tokens=dict(manifest.special_tokens),
        streams=streams,
        shards=shards,
        manifest=manifest,
    )
    if ds.sequences == 0:
        raise UsageError(f"{root}: the manifest lists no sequences")
    return ds


# ---------------------------------------------------------------- order: global position → (shard, sample)


class SampleOrder:
    """The seeded global order: position p → (shard index, sample index in the shard), epochs repeating."""

    def __init__(self, shard_sizes: list[int], seed: int) -> None:
        self.sizes, self.seed, self.total = shard_sizes, seed, sum(shard_sizes)
        self._epoch, self._table = -1, np.empty((0, 2), dtype=np.int64)

    def _build(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for shard in rng.permutation(len(self.sizes)):
            local = rng.permutation(self.sizes[shard])
            parts.append(np.stack([np.full_like(local, shard), local], axis=1))
        self._epoch, self._table = epoch, np.concatenate(parts)

    def __getitem__(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.total)
        if epoch != self._epoch:
            self._build(epoch)
        shard, local = self._table[offset]
        return int(shard), int(local)


# ---------------------------------------------------------------- reading one sample


def local_copy(shard: Shard) -> str:
    """A local path for the shard: itself when local, else a cached copy verified against its sha256."""
    if "://" not in shard.url or shard.url.startswith("file://"):
        return shard.url.removeprefix("file://")
    cache = Path(os.environ.get("MM1DATA_CACHE", Path(tempfile.gettempdir()) / "mm1data-cache"))
    name = shard.sha256 or hashlib.sha256(shard.url.encode()).hexdigest()
    path = cache / f"{name}.tar"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with fsspec.open(shard.url, "rb") as f:
            data = f.read()
        if shard.sha256 and hashlib.sha256(data).hexdigest() != shard.sha256:
            raise OSError(f"{shard.url}: sha256 does not match the manifest")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: concurrent workers may both download, one copy wins
    return str(path)


def index_tar(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """The samples of a tar in order: (key, {extension: (data offset, size)}).

    Walks the file's 512-byte ustar headers (checksums checked): several times faster than
    ``tarfile`` (``benchmarks/train.py``), which matters because every loader worker indexes every
    shard it reads. A tar with other header kinds (pax extended headers, GNU long names, links,
    base-256 sizes) is indexed by :func:`index_tar_with_tarfile` instead."""
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        at = 0
        while at + 512 <= len(data):
            header = data[at : at + 512]
            if header == EMPTY_BLOCK:  # end of archive
                break
            if int(header[148:156].rstrip(b"\0 ") or b"0", 8) != sum(header) - sum(header[148:156]) + 256:
                raise ValueError(f"{path}: bad tar header checksum at byte {at}")
            kind, size_field = header[156:157], header[124:136]
            if kind not in (b"0", b"\0", b"5") or size_field[0] & 0x80:
                return index_tar_with_tarfile(path)
            name = header[:100].split(b"\0", 1)[0]
            if header[257:263] == b"ustar\0" and header[345]:  # POSIX name prefix
                name = header[345:500].split(b"\0", 1)[0] + b"/" + name
            size = int(size_field.rstrip(b"\0 ") or b"0", 8)
            at += 512
            parts = split_key(name.decode("utf-8", "surrogateescape")) if kind != b"5" else None
            if parts is not None:
                key, ext = parts
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = (at, size)
            at += -(-size // 512) * 512
    return samples


def index_tar_with_tarfile(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """:func:`index_tar` through ``tarfile`` (any tar format)."""
    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            parts = split_key(info.name)
            if not info.isfile() or parts is None:
                continue
            key, ext = parts
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = (info.offset_data, info.size)
    return samples


def decode_jpeg_into(data: bytes | memoryview, out: np.ndarray) -> None:
    """Decode a JPEG straight into ``out`` (uint8 [S, S, 3], e.g. one image of a batch).

    libjpeg-turbo (through simplejpeg) writes RGB pixels into ``out`` itself: no intermediate image,
    no copy. Grayscale becomes RGB. The pixels are the ones Pillow decodes (same library, accurate
    DCT and upsampling); ``benchmarks/train.py`` measures the two side by side."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    if (width, height) != (out.shape[1], out.shape[0]):
        raise ValueError(f"image is {width}x{height}, expected {out.shape[1]}x{out.shape[0]}")
    simplejpeg.decode_jpeg(data, "RGB", buffer=out)


class ShardReader:
    """Random access to samples of a dataset's shards: a few shards memory-mapped and indexed at a time."""

    def __init__(self, ds: PackedDataset, keep: int = 8) -> None:
        self.ds, self.keep = ds, keep
        self._open: OrderedDict[int, tuple[memoryview, list]] = OrderedDict()

    def _shard(self, i: int) -> tuple[memoryview, list]:
        if i not in self._open:
            path = local_copy(self.ds.shards[i])
            index = index_tar(path)
            if len(index) != self.ds.shards[i].sequences:
                raise ValueError(
                    f"{path}: {len(index)} samples, the manifest says {self.ds.shards[i].sequences}"
                )
            with open(path, "rb") as f:
                data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
            self._open[i] = (data, index)
            if len(self._open) > self.keep:
                self._open.popitem(last=False)  # unmapped once no sample still views it
        self._open.move_to_end(i)
        return self._open[i]

    def read(self, shard: int, sample: int) -> dict[str, Any]:
        """Sample ``sample`` of shard ``shard``: its checked int arrays, ``meta``, ``jpegs`` (still encoded,
        zero-copy views of the shard, decoded by :func:`collate`) and ``key`` = "shard-name#key"."""
        data, index = self._shard(shard)
        key, members = index[sample]
        raw = {ext: data[off : off + size] for ext, (off, size) in members.items()}
        try:
            out: dict[str, Any] = {
                m.removesuffix(".npy"): load_array(raw[m], m, self.ds.seq_len) for m in ARRAYS
            }
            out["meta"] = json.loads(bytes(raw[META]))
            out["jpegs"] = [raw[image_member(i)] for i in range(len(out["meta"]["images"]))]
        except (KeyError, ValueError) as e:
            raise ValueError(f"{self.ds.shards[shard].url}#{key}: bad member {e}") from e
        out["key"] = f"{Path(self.ds.shards[shard].url).name}#{key}"
        return out


# ---------------------------------------------------------------- batches


def collate(samples: list[dict[str, Any]], streams: tuple[str, ...], size: int) -> dict[str, Any]:
    """Decode and stack samples into a micro-batch of tensors.

    ``stream_ids`` [B, T] int8 is the index in ``streams`` (the mix's names) of each token's example
    (-1 on padding);
    ``image_index`` [N] is each image's first slot as a flat position b·T + slot_start; ``images``
    [N, size, size, 3] uint8, each JPEG decoded straight into its place."""
    T = len(samples[0]["tokens"])
    stream_ids = np.full((len(samples), T), -1, dtype=np.int8)
    image_index = []
    for b, s in enumerate(samples):
        for ex in s["meta"]["examples"]:
            stream_ids[b, ex["span"][0] : ex["span"][1]] = streams.index(mix_group(ex["stream"], streams))
        image_index += [b * T + im["slot_start"] for im in s["meta"]["images"]]
    jpegs = [(s["key"], i, j) for s in samples for i, j in enumerate(s["jpegs"])]
    images = np.empty((len(jpegs), size, size, 3), np.uint8)
    for (key, i, jpeg), out in zip(jpegs, images, strict=True):
        try:
            decode_jpeg_into(jpeg, out)
        except ValueError as e:
            raise ValueError(f"{key} img{i:03d}.jpg: {e}") from e
    return {
        "tokens": torch.from_numpy(np.stack([s["tokens"] for s in samples], dtype=np.int64)),
        "segment_ids": torch.from_numpy(np.stack([s["segment_ids"] for s in samples])),
        "positions": torch.from_numpy(np.stack([s["positions"] for s in samples])),
        "loss_mask": torch.from_numpy(np.stack([s["loss_mask"] for s in samples])),
        "stream_ids": torch.from_numpy(stream_ids),
        "images": torch.from_numpy(images),
        "image_index": torch.tensor(image_index, dtype=torch.int64),
        "keys": [s["key"] for s in samples],
    }


class PackedBatches(IterableDataset):
    """This rank's micro-batches for ``steps`` training steps starting at global ``cursor``.

    Each step yields ``G / (W · micro_batch)`` micro-batches; micro-batch m goes to loader worker
    m mod workers, which DataLoader reads round-robin, so the order does not depend on the worker count.
    """

    def __init__(
        self,
        ds: PackedDataset,
        *,
        global_batch: int,
        micro_batch: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        cursor: int = 0,
        steps: int = 1,
    ) -> None:
        super().__init__()
        if global_batch % (world * micro_batch):
            raise UsageError(
                f"batch size {global_batch} is not a multiple of world {world} × micro-batch {micro_batch}"
            )
        self.ds, self.global_batch, self.micro_batch = ds, global_batch, micro_batch
        self.rank, self.world, self.seed, self.cursor, self.steps = rank, world, seed, cursor, steps
        self.accum = global_batch // (world * micro_batch)

    def positions(self, step: int, micro: int) -> range:
        """Global order positions of micro-batch ``micro`` of step ``step`` (counted from the cursor)."""
        start = self.cursor + step * self.global_batch + self.rank * (self.global_batch // self.world)
        start += micro * self.micro_batch
        return range(start, start + self.micro_batch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        order = SampleOrder([s.sequences for s in self.ds.shards], self.seed)
        reader = ShardReader(self.ds)
        for m in range(worker, self.steps * self.accum, workers):
            step, micro = divmod(m, self.accum)
            samples = [reader.read(*order[p]) for p in self.positions(step, micro)]
            yield collate(samples, self.ds.streams, self.ds.image_size)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(
    batches: PackedBatches, workers: int = 2, prefetch: int = 4, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over :class:`PackedBatches`: JPEG decoding in ``workers`` processes, prefetching."""
    return DataLoader(
        batches,
        batch_size=None,
        num_workers=workers,
        prefetch_factor=prefetch if workers else None,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers else None,
    )
