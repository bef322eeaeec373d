"""What every reader shares: read units, path expansion, image description, reject rows.

A reader is two functions: ``plan(spec, cfg) -> list[Unit]`` runs on the driver (expands globs,
fails fast on a bad path), ``read(unit, cfg) -> Iterator[pa.Table]`` runs on Ray workers and
yields batches in the stream's schema. Bad records become rows whose ``reject`` is filled by
stage ``ingest`` with a specific reason; the job goes on.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import fsspec
import pyarrow as pa
from PIL import Image

from mm1data.config import IngestConfig, SourceSpec
from mm1data.errors import UsageError

STAGE = "ingest"


@dataclass(frozen=True)
class Unit:
    """One piece of work for a Ray worker: a file (or file + image folder) of one format."""

    stream: str
    format: str
    path: str
    images: str | None = None
    name: str | None = None

    def to_json(self) -> str:
        """Serialized form carried through Ray Data rows."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Unit:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def expand_paths(spec: SourceSpec) -> list[str]:
    """Files matching ``spec.path`` (a file, a folder, or a glob; local or remote), sorted.

    Raises :class:`UsageError` when nothing matches.
    """
    fs, _, paths = fsspec.get_fs_token_paths(spec.path)
    protocol = fs.protocol[0] if isinstance(fs.protocol, (list, tuple)) else fs.protocol
    out: list[str] = []
    for p in paths:
        if fs.isdir(p):
            out.extend(f for f in fs.find(p) if not f.rsplit("/", 1)[-1].startswith("."))
        elif fs.exists(p):
            out.append(p)
    if not out:
        raise UsageError(f"input not found: {spec.path}")
    if protocol not in ("file", "local"):
        out = [f"{protocol}://{p}" for p in out]
    return sorted(out)


def read_bytes(path: str) -> bytes:
    """Whole file bytes from a local path or URL."""
    with fsspec.open(path, "rb") as f:
        return f.read()


def open_text(path: str) -> io.BufferedIOBase:
    """Open a possibly compressed (.gz, .zst, .bz2, .xz) line file for reading bytes line by line."""
    if path.endswith(".zst"):
        import zstandard

        raw = fsspec.open(path, "rb").open()
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return fsspec.open(path, "rb", compression="infer").open()


def fetchable(url: object) -> bool:
    """Whether ``url`` is an absolute http(s) URL the download phase can fetch."""
    return isinstance(url, str) and url.strip().lower().startswith(("http://", "https://"))


def rejected(
    row_id: str, source: str, offset: int, reason: str, detail: str | None = None, score: float | None = None
) -> dict:
    """A row dict that is only an ingest reject (no payload)."""
    return {
        "id": row_id,
        "lineage": {"source": source, "offset": offset},
        "reject": reject_info(reason, detail, score),
    }


def reject_info(reason: str, detail: str | None = None, score: float | None = None) -> dict:
    """A ``reject`` struct value from stage ingest."""
    return {"stage": STAGE, "reason": reason, "detail": detail, "score": score, "duplicate_of": None}


@dataclass(frozen=True)
class ImageInfo:
    """What ingest records about an image: hash, size, format and its perceptual hashes."""

    sha256: str
    width: int
    height: int
    format: str
    phash: int | None = None
    dhash: int | None = None


class BadImage(Exception):
    """An image that cannot be accepted; ``reason`` is the reject reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def describe_image(data: bytes | None, cfg: IngestConfig) -> ImageInfo:
    """The one decode of an image when it is first read: hash it, measure it, and decode the whole
    stream once (JPEG at a reduced scale, in grayscale) to prove it is whole and to compute its
    perceptual hashes (:mod:`mm1data.dedup.image_hash`), which later phases read as columns.

    Raises :class:`BadImage` with reason ``image_empty``, ``image_too_large`` (bytes),
    ``decompression_bomb`` (pixels) or ``image_undecodable``.
    """
    from mm1data.dedup.image_hash import hashes_of

    if not data:
        raise BadImage("image_empty", "zero-byte image")
    if len(data) > cfg.max_image_bytes:
        raise BadImage("image_too_large", f"{len(data)} bytes > {cfg.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                fmt = (img.format or "unknown").lower()
                if width * height > cfg.max_image_pixels:
                    raise BadImage("decompression_bomb", f"{width}x{height} pixels > {cfg.max_image_pixels}")
                phash, dhash = hashes_of(img)  # decodes the whole stream: catches truncated data
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("decompression_bomb", str(e)[:200]) from e
    except Exception as e:  # Pillow raises many types for corrupt data
        detail = re.sub(r" at 0x[0-9a-fA-F]+", "", str(e))[:200]  # no memory addresses: same bytes every run
        raise BadImage("image_undecodable", f"{type(e).__name__}: {detail}") from e
    return ImageInfo(hashlib.sha256(data).hexdigest(), width, height, fmt, phash, dhash)


def image_fields(data: bytes, info: ImageInfo) -> dict:
    """The image columns of a row."""
    return {
        "image": data,
        "image_sha256": info.sha256,
        "width": info.width,
        "height": info.height,
        "format": info.format,
        "phash": info.phash,
        "dhash": info.dhash,
    }


def decode_utf8(raw: bytes) -> str:
    """Strict UTF-8 decoding; raises ``UnicodeDecodeError`` on invalid bytes."""
    return raw.decode("utf-8")


def batched(rows: Iterator[dict], schema: pa.Schema, size: int) -> Iterator[pa.Table]:
    """Group row dicts into tables of ``schema`` with at most ``size`` rows."""
    buf: list[dict] = []
    for row in rows:
        buf.append(row)
        if len(buf) >= size:
            yield pa.Table.from_pylist(buf, schema=schema)
            buf = []
    if buf:
        yield pa.Table.from_pylist(buf, schema=schema)
