"""The ``mm1data/packed-v1`` contract in code: the one owner of what a packed dataset is.

``schemas/packed-v1.md`` is the written contract; this module states it for every reader and
writer (the shard writer, ``build``, ``inspect``, ``publish``, the trainer's loader and the
Energon, Hugging Face and Ray readers), and a test checks that the two agree.

- names: :func:`shard_name`, :func:`sample_key`, :func:`tar_index_name`; the key rule
  :func:`split_key` (webdataset's ``base_plus_ext``: the key is the member name up to the first
  dot of its base name);
- members: :data:`ARRAYS` (name → dtype), :data:`META`, :func:`image_member`, with
  :func:`npy_bytes` / :func:`load_array` and :func:`read_members` (safe member names);
- the Energon sample index (``<shard>.tar.idx``): :func:`pack_tar_index` and :func:`scan_tar`;
- the manifest: :class:`Header`, :class:`ShardEntry`, :class:`Totals` and :class:`Manifest`
  (``to_json`` / ``from_json`` with validation), written by streaming with
  :func:`write_manifest` (O(streams) memory, whatever the number of shards) and read with
  :func:`read_manifest`;
- :func:`verify`: every shard's size and sha256, its ``.tar.idx``, and the ``.nv-meta`` files.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import struct
import tarfile
import tempfile
import types
import typing
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Union

import numpy as np

from mm1data.errors import UsageError

FORMAT = "mm1data/packed-v1"
VERSION = 1
MANIFEST = "manifest.json"
TAR_INDEX_SUFFIX = ".idx"  # <shard>.tar.idx: Energon's sample offsets (8-byte little-endian uint64 each)

STREAMS = ("caption", "synthetic_caption", "interleaved", "text")
"""Example streams, in mix order: the names in the json member, the manifest's mix and the trainer's log."""

ARRAYS: dict[str, np.dtype] = {
    "tokens.npy": np.dtype("<i4"),
    "segment_ids.npy": np.dtype("<i4"),
    "positions.npy": np.dtype("<i4"),
    "loss_mask.npy": np.dtype("u1"),
}
"""The ``.npy`` members of every sample: member name → dtype (1-D, ``seq_len`` long)."""
META = "json"
"""The per-sample metadata member (examples with spans, images with slots)."""
IMAGE_MEMBER = re.compile(r"^img(\d{3})\.jpg$")
MAX_IMAGES = 1000  # three digits in the image member name

_KEY_RULE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext, Energon's split_name_re
_SHARD_NAME = re.compile(r"^shard-(\d{5})-(\d{5})\.tar$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
READ_BLOCK = 8 * 2**20


class BadShard(ValueError):
    """A tar that is not a readable packed-v1 shard (bad member names, unreadable arrays...)."""


class ManifestError(UsageError):
    """A ``manifest.json`` that is missing, not JSON, or breaks the contract (exit code 2)."""


# ---------------------------------------------------------------------------------------------- names


def shard_name(part: int, index: int) -> str:
    """File name of shard ``index`` of plan partition ``part`` inside the dataset folder."""
    return f"shard-{part:05d}-{index:05d}.tar"


def shard_range(part: int, first: int, last: int) -> str:
    """A brace pattern (``braceexpand``, as Energon reads it) naming shards ``first..last`` of ``part``."""
    if first == last:
        return shard_name(part, first)
    return f"shard-{part:05d}-{{{first:05d}..{last:05d}}}.tar"


def parse_shard_name(name: str) -> tuple[int, int] | None:
    """``(part, index)`` of a name made by :func:`shard_name`, else None."""
    m = _SHARD_NAME.match(name.rsplit("/", 1)[-1])
    return (int(m.group(1)), int(m.group(2))) if m else None


def sample_key(part: int, index: int, seq: int) -> str:
    """WebDataset key of sequence ``seq`` of shard ``index`` of partition ``part`` (no dots)."""
    return f"{part:05d}-{index:05d}-{seq:06d}"


def image_member(i: int) -> str:
    """Member name (after the key) of a sequence's ``i``-th image."""
    return f"img{i:03d}.jpg"


def tar_index_name(shard_path: str) -> str:
    """``<shard>.tar.idx``: where Energon looks for a shard's sample offsets."""
    return shard_path + TAR_INDEX_SUFFIX


def split_key(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member name by webdataset's rule (the key runs to the first dot
    of the base name, folders included), or None for a name without an extension."""
    m = _KEY_RULE.match(name)
    return (m.group(1), m.group(2)) if m else None


def mix_group(stream: str, target: Iterable[str]) -> str:
    """The mix entry an example of ``stream`` counts toward: synthetic captions count as captions
    unless the mix names ``synthetic_caption``."""
    if stream == "synthetic_caption" and stream not in target:
        return "caption"
    return stream


# -------------------------------------------------------------------------------------------- members


def npy_bytes(a: np.ndarray) -> bytes:
    """``a`` as ``.npy`` bytes (NumPy format 1.0, loadable with ``allow_pickle=False``)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def load_array(data: bytes | memoryview, member: str, length: int | None = None) -> np.ndarray:
    """The ``.npy`` member ``member`` (no pickles), checked to be 1-D of its contract dtype (and
    ``length`` long when given); :class:`BadShard` otherwise."""
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise BadShard(f"{member}: unreadable array: {e}") from e
    want = ARRAYS[member]
    if a.ndim != 1 or a.dtype != want or (length is not None and len(a) != length):
        shape = f"[{length}]" if length is not None else " 1-D"
        raise BadShard(f"{member}: {a.dtype}{list(a.shape)}, expected {want}{shape}")
    return a


def read_members(data: bytes) -> list[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of a tar, in tar order, by :func:`split_key`.

    Member names go through :func:`mm1data.io.safety.safe_member_name`: an absolute path, a ``..``
    part, a non-regular member or a name without extension is a :class:`BadShard`."""
    from mm1data.io.safety import UnsafeName, safe_member_name

    out: list[tuple[str, dict[str, bytes]]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                try:
                    name = safe_member_name(info.name)
                except UnsafeName as e:
                    raise BadShard(f"unsafe member name {info.name!r} ({e.reason})") from e
                if not info.isfile():
                    raise BadShard(f"member {name!r} is not a regular file")
                parts = split_key(name)
                if parts is None:
                    raise BadShard(f"member {name!r} has no extension")
                key, ext = parts
                if not out or out[-1][0] != key:
                    out.append((key, {}))
                f = tar.extractfile(info)
                out[-1][1][ext] = f.read() if f else b""
    except tarfile.TarError as e:
        raise BadShard(f"not a readable tar: {e}") from e
    return out


# ----------------------------------------------------------------------------- the Energon sample index


def pack_tar_index(offsets: Iterable[int]) -> bytes:
    """A ``.tar.idx``: each sample's first header offset, then the offset of the end-of-archive
    block, as little-endian uint64 (what ``energon prepare``'s ``TarIndexWriter`` writes)."""
    offsets = list(offsets)
    return struct.pack(f"<{len(offsets)}Q", *offsets)


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.f.read(len(b))
        b[: len(data)] = data
        self.sha.update(data)
        self.n += len(data)
        return len(data)


@dataclass(frozen=True)
class TarScan:
    """What one sequential read of a shard tar gives: its sha256, size, samples and ``.tar.idx``."""

    sha256: str
    bytes: int
    samples: int
    tar_index: bytes


def scan_tar(f: BinaryIO) -> TarScan:
    """Read a tar stream once: sha256 and size of all its bytes, and the ``.tar.idx`` Energon's
    preparation derives from it (a new sample starts where :func:`split_key` gives a new key)."""
    reader = _HashingReader(f)
    stream = io.BufferedReader(reader, READ_BLOCK)
    offsets, last = [], None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                parts = split_key(info.name) if info.isreg() else None
                if parts is None or re.match(r"__[^/]*__($|/)", info.name):
                    continue
                if parts[0] != last:
                    offsets.append(info.offset)
                    last = parts[0]
            end = tar.offset
    except tarfile.TarError as e:
        raise BadShard(f"not a readable tar: {e}") from e
    while stream.read(READ_BLOCK):
        pass
    return TarScan(reader.sha.hexdigest(), reader.n, len(offsets), pack_tar_index([*offsets, end]))


# ------------------------------------------------------------------------------------------ manifest


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _typed(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked (and converted: lists → tuples, ints → floats) against annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _typed(value, next(a for a in args if a is not type(None)), where)
    if _is_dataclass_type(tp):
        return _from_dict(tp, value, where)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected an object, got {type(value).__name__}")
        if not args:
            return value
        return {str(k): _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    elif origin is tuple:
        if not isinstance(value, list | tuple):
            raise ManifestError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    else:  # pragma: no cover - an annotation this loader does not know
        raise TypeError(f"{where}: unsupported annotation {tp!r}")
    if not ok:
        raise ManifestError(f"{where}: expected {tp.__name__}, got {json.dumps(value)[:40]}")
    return value


def _from_dict(cls: type, obj: Any, where: str) -> Any:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected an object, got {type(obj).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in obj:
            kwargs[f.name] = _typed(obj[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ManifestError(f"{where}: missing field {f.name!r}")
    return cls(**kwargs)  # unknown fields are ignored (writers may add some; readers ignore them)


class _Json:
    """``to_json``/``from_json`` for the manifest's dataclasses."""

    def to_json(self) -> dict[str, Any]:
        """This object as the JSON-ready dict the manifest holds (fields in declaration order)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any, where: str = MANIFEST) -> Any:
        """An instance from parsed JSON; :class:`ManifestError` naming the first bad field."""
        return _from_dict(cls, obj, where)


@dataclass(frozen=True, kw_only=True)
class Tokenizer(_Json):
    """The tokenizer that made the token ids."""

    name: str
    sha256: str  # of the tokenizer.json bytes
    vocab_size: int  # added tokens included


@dataclass(frozen=True, kw_only=True)
class Mix(_Json):
    """Target and realized shares per stream (mix group), in one unit."""

    target: dict[str, float]
    unit: str  # tokens | examples | sequences; tokens = text + image-slot tokens, padding excluded
    realized: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class ShardEntry(_Json):
    """One shard as the manifest lists it."""

    path: str  # relative to the dataset folder
    bytes: int
    sha256: str
    sequences: int
    images: int
    tokens: dict[str, int]  # non-pad tokens per stream
    examples: dict[str, int]  # examples per stream
    mix: dict[str, float]  # realized share per mix group in this shard
    full: bool  # False for the last, possibly short, shard of a plan partition

    @property
    def tar_index(self) -> str:
        """Path of this shard's ``.tar.idx``."""
        return tar_index_name(self.path)


@dataclass(frozen=True, kw_only=True)
class Totals(_Json):
    """Sums over every shard (written after the shard list)."""

    shards: int
    sequences: int
    images: int
    tokens: int
    tokens_by_stream: dict[str, int]
    examples: int
    examples_by_stream: dict[str, int]
    bytes: int
    fill: float  # non-pad tokens / (sequences x seq_len)
    attainable_fill: float | None = None  # the plan's bound on fill, when the writer knows it


@dataclass(frozen=True, kw_only=True)
class Header(_Json):
    """Everything in ``manifest.json`` before the shard list: the layout, tokenizer, mix and build."""

    format: str = FORMAT
    version: int = VERSION
    seq_len: int
    image_tokens: int
    image_markers: bool = True
    max_images: int
    image_size: int
    jpeg_quality: int
    tokenizer: Tokenizer
    special_tokens: dict[str, int]  # pad, eos, image, image_start, image_end
    mix: Mix
    epochs: dict[str, float]
    partitions: int = 1  # plan partitions (shard names carry the partition)
    build: dict[str, Any] = field(default_factory=dict)
    mm1data_version: str = ""

    @property
    def streams(self) -> tuple[str, ...]:
        """The mix's stream names in :data:`STREAMS` order: the trainer logs its loss per each."""
        return tuple(s for s in STREAMS if s in self.mix.target)

    def validate(self, where: str = MANIFEST) -> None:
        """Raise :class:`ManifestError` when the header breaks the contract."""
        if self.format != FORMAT:
            raise ManifestError(f"{where}: format {self.format!r}, expected {FORMAT!r}")
        if self.version != VERSION:
            raise ManifestError(f"{where}: version {self.version}, this mm1data reads version {VERSION}")
        for name in ("seq_len", "image_tokens", "image_size", "partitions"):
            if getattr(self, name) < 1:
                raise ManifestError(f"{where}: {name} must be at least 1")
        if not 0 <= self.max_images <= MAX_IMAGES:
            raise ManifestError(f"{where}: max_images must be in [0, {MAX_IMAGES}]")
        missing = {"pad", "eos", "image"} - set(self.special_tokens)
        if missing:
            raise ManifestError(f"{where}: special_tokens lacks {sorted(missing)}")
        for name, d in (("mix.target", self.mix.target), ("mix.realized", self.mix.realized)):
            _check_streams(d, f"{where}: {name}")
        _check_streams(self.epochs, f"{where}: epochs")


def _check_streams(d: dict[str, Any], where: str) -> None:
    unknown = sorted(set(d) - set(STREAMS))
    if unknown:
        raise ManifestError(f"{where}: unknown stream {unknown[0]!r} (known: {', '.join(STREAMS)})")


@dataclass(frozen=True, kw_only=True)
class Manifest(Header):
    """A whole ``manifest.json``: the header, every shard, and the totals."""

    shards: tuple[ShardEntry, ...]
    totals: Totals

    @property
    def header(self) -> Header:
        """The header fields alone."""
        return Header(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Header)})

    @classmethod
    def from_json(cls, obj: Any, where: str = MANIFEST) -> Manifest:
        """A validated manifest from parsed JSON; :class:`ManifestError` on any breach."""
        m = _from_dict(cls, obj, where)
        m.validate(where)
        return m

    def validate(self, where: str = MANIFEST) -> None:
        """Raise :class:`ManifestError` when the manifest breaks the contract: header fields, shard
        paths (safe, relative, unique, sorted), sha256 form, streams, and totals = sums of shards."""
        super().validate(where)
        acc = TotalsBuilder(self.seq_len)
        for i, e in enumerate(self.shards):
            acc.add(e, f"{where}: shards[{i}]")
        want = acc.totals(self.totals.attainable_fill)
        if want != self.totals:
            diff = [k for k in want.to_json() if want.to_json()[k] != self.totals.to_json().get(k)]
            raise ManifestError(f"{where}: totals {diff} do not match the sums over the shards")

    @classmethod
    def read(cls, raw: bytes, where: str = MANIFEST) -> Manifest:
        """Parse and validate ``manifest.json`` bytes."""
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"{where} is not valid JSON ({e})") from e
        return cls.from_json(obj, where)


def _check_shard_path(path: str, where: str) -> None:
    from mm1data.io.safety import UnsafeName, safe_member_name

    try:
        clean = safe_member_name(path)
    except UnsafeName as e:
        raise ManifestError(f"{where}: path {path!r} is not a safe relative path ({e.reason})") from e
    if clean != path or not path.endswith(".tar"):
        raise ManifestError(f"{where}: path {path!r} is not a plain relative path to a .tar")


class TotalsBuilder:
    """Sums shard entries into :class:`Totals` one at a time (O(streams) memory), checking each."""

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len
        self.n = self.sequences = self.images = self.bytes = 0
        self.tokens: Counter[str] = Counter()
        self.examples: Counter[str] = Counter()
        self.last: str | None = None

    def add(self, e: ShardEntry, where: str) -> None:
        """Count ``e``; :class:`ManifestError` when it is malformed or out of path order."""
        _check_shard_path(e.path, where)
        if self.last is not None and e.path <= self.last:
            raise ManifestError(f"{where}: path {e.path!r} is not after {self.last!r} (sorted, unique)")
        if not _SHA256.match(e.sha256):
            raise ManifestError(f"{where}: sha256 must be 64 lowercase hex digits")
        if min(e.bytes, e.sequences, e.images, *e.tokens.values(), *e.examples.values(), 0) < 0:
            raise ManifestError(f"{where}: negative count")
        for name, d in (("tokens", e.tokens), ("examples", e.examples), ("mix", e.mix)):
            _check_streams(d, f"{where}.{name}")
        self.last = e.path
        self.n += 1
        self.sequences += e.sequences
        self.images += e.images
        self.bytes += e.bytes
        self.tokens.update(e.tokens)
        self.examples.update(e.examples)

    def totals(self, attainable_fill: float | None = None) -> Totals:
        """The totals of everything added so far."""
        tokens = sum(self.tokens.values())
        return Totals(
            shards=self.n,
            sequences=self.sequences,
            images=self.images,
            tokens=tokens,
            tokens_by_stream=dict(sorted(self.tokens.items())),
            examples=sum(self.examples.values()),
            examples_by_stream=dict(sorted(self.examples.items())),
            bytes=self.bytes,
            fill=round(tokens / (self.sequences * self.seq_len), 6) if self.sequences else 0.0,
            attainable_fill=None if attainable_fill is None else round(attainable_fill, 6),
        )


def _indented(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for line in text.split("\n"))


def write_manifest(
    f: IO[str], header: Header, shards: Iterable[ShardEntry], attainable_fill: float | None = None
) -> Totals:
    """Write ``manifest.json`` to the text stream ``f`` as shards arrive: the header, then each shard
    entry (``shards`` must come sorted by path), then the totals summed on the way. Memory is
    O(streams) whatever the number of shards; the bytes equal ``json.dumps(manifest.to_json(),
    indent=1)``. Returns the totals. :class:`ManifestError` on a bad header or entry."""
    if isinstance(header, Manifest):
        header = header.header
    header.validate()
    head = json.dumps(header.to_json(), indent=1)
    f.write(head[: -len("\n}")] + ',\n "shards": [')
    acc = TotalsBuilder(header.seq_len)
    for i, entry in enumerate(shards):
        acc.add(entry, f"shards[{i}]")
        f.write(("\n" if i == 0 else ",\n") + _indented(json.dumps(entry.to_json(), indent=1), 2))
    f.write("\n ]" if acc.n else "]")
    totals = acc.totals(attainable_fill)
    f.write(',\n "totals": ' + _indented(json.dumps(totals.to_json(), indent=1), 1)[1:] + "\n}")
    return totals


@contextlib.contextmanager
def atomic_write(url: str) -> Iterator[BinaryIO]:
    """A binary file for ``url`` (local or ``s3://``) that appears whole or not at all: written
    beside and renamed locally, spooled to a local temporary file and put in one upload on S3."""
    from mm1data.io.fs import fsspec_fs, is_s3

    fs, path = fsspec_fs(url)
    if is_s3(url):
        with tempfile.NamedTemporaryFile(prefix="mm1data-") as tmp:
            yield tmp  # type: ignore[misc]
            tmp.flush()
            fs.put_file(tmp.name, path)
        return
    fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.partial"
    try:
        with open(partial, "wb") as f:
            yield f
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def read_manifest(root: str, endpoint_url: str | None = None) -> Manifest:
    """The validated ``manifest.json`` of a dataset (local folder or ``s3://bucket/prefix``).

    :class:`ManifestError` (a :class:`UsageError`) when it is missing (an unfinished or unpublished
    dataset), unreadable, not JSON, or breaks the contract."""
    from mm1data.io.fs import fsspec_fs, redact

    fs, path = fsspec_fs(root, endpoint_url)
    where = f"{redact(root.rstrip('/'))}/{MANIFEST}"
    try:
        raw = fs.cat_file(f"{path.rstrip('/')}/{MANIFEST}")
    except FileNotFoundError as e:
        raise ManifestError(
            f"no {MANIFEST} in {redact(root)} (not a finished `mm1data build` output, or unpublished)"
        ) from e
    except OSError as e:
        raise ManifestError(f"cannot read {where}: {redact(e)}") from e
    return Manifest.read(raw, where)


# -------------------------------------------------------------------------------------------- verify


def verify_shard(fs: Any, root: str, entry: ShardEntry) -> list[str]:
    """Problems with one stored shard (``root`` is the dataset path inside ``fs``): its size and
    sha256 against the manifest, its sample count, and its ``.tar.idx`` against the one the tar
    gives. [] when all match."""
    path = f"{root}/{entry.path}"
    try:
        size = int(fs.size(path))
    except FileNotFoundError:
        return [f"{entry.path}: missing"]
    if size != entry.bytes:
        return [f"{entry.path}: {size} bytes, manifest says {entry.bytes}"]
    with fs.open(path, "rb", block_size=READ_BLOCK) as f:
        try:
            scan = scan_tar(f)
        except BadShard as e:
            return [f"{entry.path}: {e}"]
    if scan.bytes != entry.bytes:
        return [f"{entry.path}: read {scan.bytes} bytes, manifest says {entry.bytes}"]
    if scan.sha256 != entry.sha256:
        return [f"{entry.path}: sha256 {scan.sha256[:12]}… differs from the manifest's {entry.sha256[:12]}…"]
    problems = []
    if scan.samples != entry.sequences:
        problems.append(f"{entry.path}: {scan.samples} samples, manifest says {entry.sequences}")
    try:
        idx = fs.cat_file(f"{root}/{entry.tar_index}")
    except FileNotFoundError:
        idx = None
    if idx is None:
        problems.append(f"{entry.tar_index}: missing")
    elif idx != scan.tar_index:
        problems.append(f"{entry.tar_index}: differs from the sample offsets of {entry.path}")
    return problems


def verify(
    root: str,
    endpoint_url: str | None = None,
    *,
    manifest: Manifest | None = None,
    workers: int = 8,
) -> list[str]:
    """Check a dataset (local folder or ``s3://`` prefix) against its manifest: every shard's size,
    sha256, sample count and ``.tar.idx``, and the ``.nv-meta`` files Energon reads. One line per
    problem; [] when everything matches. :class:`ManifestError` when there is no valid manifest."""
    from mm1data.io.fs import fsspec_fs, redact
    from mm1data.shards.energon import verify_energon_metadata

    manifest = manifest or read_manifest(root, endpoint_url)
    fs, path = fsspec_fs(root, endpoint_url)
    path = path.rstrip("/")

    def check(entry: ShardEntry) -> list[str]:
        try:
            return verify_shard(fs, path, entry)
        except OSError as e:
            return [f"{entry.path}: cannot read ({redact(e)})"]

    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        problems = [p for ps in pool.map(check, manifest.shards) for p in ps]
    return problems + verify_energon_metadata(fs, path, manifest)
