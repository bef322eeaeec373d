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
    row_groups: list[int] | None = None  # Parquet: only row groups [start, stop) of the file
    first_row: int = 0  # the file's row number of the unit's first row (offsets and ids count from it)

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


class TableFile:
    """A Parquet, CSV or TSV file (CSV/TSV possibly compressed) read as a stream of record batches
    (one row group or CSV block at a time), so a reader's memory does not grow with the file."""

    def __init__(self, path: str, fmt: str, rows: int, row_groups: list[int] | None = None) -> None:
        self.path, self.fmt, self.rows, self.row_groups = path, fmt, rows, row_groups
        with open_text(path) as f:
            self.columns = self._reader(f)[0]

    def _reader(self, f, names: list[str] | None = None) -> tuple[list[str], Iterator[pa.RecordBatch]]:
        if self.fmt in ("csv", "tsv"):  # every column as text: types guessed per block could disagree
            import pyarrow.csv as pacsv

            parse = pacsv.ParseOptions(delimiter="\t" if self.fmt == "tsv" else ",")
            if names is None:
                return pacsv.open_csv(f, parse_options=parse).schema.names, iter(())
            convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
            return names, iter(pacsv.open_csv(f, parse_options=parse, convert_options=convert))
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f)
        # one reader per row group: a reader over the whole file keeps every page it has read
        # until it is closed (pyarrow 26: 1.2 GiB held after iterating a 1 GB file)
        start, stop = self.row_groups or (0, pf.num_row_groups)
        groups = (
            batch
            for i in range(start, min(stop, pf.num_row_groups))
            for batch in pf.iter_batches(batch_size=self.rows, row_groups=[i])
        )
        return pf.schema_arrow.names, groups

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The file's rows in order, at most ``rows`` per batch for Parquet."""
        with open_text(self.path) as f:
            yield from self._reader(f, self.columns)[1]


def split_parquet(unit: Unit, max_bytes: int) -> list[Unit]:
    """``unit`` (a whole Parquet file) as units of consecutive row groups of at most ``max_bytes``
    (uncompressed; at least one group each), so one large file is read by many tasks. Reads only
    the file's footer."""
    import dataclasses

    import pyarrow.parquet as pq

    try:
        with open_text(unit.path) as f:
            meta = pq.ParquetFile(f).metadata
    except Exception:  # an unreadable file: its reader reports it, as for any other format
        return [unit]
    units, start, first, size, rows = [], 0, 0, 0, 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if i > start and size + group.total_byte_size > max_bytes:
            units.append(dataclasses.replace(unit, row_groups=[start, i], first_row=first))
            start, first, size = i, rows, 0
        size += group.total_byte_size
        rows += group.num_rows
    stop = max(start + 1, meta.num_row_groups)
    units.append(dataclasses.replace(unit, row_groups=[start, stop], first_row=first))
    return units


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
    """What ingest records about an image: hash, size, format and its perceptual hashes; with a
    :class:`Render`, also the rendered JPEG."""

    sha256: str
    width: int
    height: int
    format: str
    phash: int | None = None
    dhash: int | None = None
    rendered: bytes | None = None


@dataclass(frozen=True)
class Render:
    """A square JPEG made from the same decode (``mm1data download --image-size``): the shorter side
    resized to ``size`` and the center cropped, with img2dataset's filters (area when shrinking,
    Lanczos when enlarging), encoded at ``quality``."""

    size: int
    quality: int = 95


class BadImage(Exception):
    """An image that cannot be accepted; ``reason`` is the reject reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def describe_image(data: bytes | None, cfg: IngestConfig, render: Render | None = None) -> ImageInfo:
    """The one decode of an image when it is first read: hash it, measure it, and decode the whole
    stream once (JPEG at a reduced scale, in grayscale) to prove it is whole and to compute its
    perceptual hashes (:mod:`mm1data.dedup.image_hash`), which later phases read as columns.

    With ``render`` the one decode is in color at the scale the render needs: the hashes are
    computed from it (reduced by the factor the grayscale draft would use, so they match that
    path's within a few bits) and the rendered JPEG is returned in ``rendered``.

    Raises :class:`BadImage` with reason ``image_empty``, ``image_too_large`` (bytes),
    ``decompression_bomb`` (pixels) or ``image_undecodable``.
    """
    from mm1data.dedup.image_hash import hashes_of

    if not data:
        raise BadImage("image_empty", "zero-byte image")
    if len(data) > cfg.max_image_bytes:
        raise BadImage("image_too_large", f"{len(data)} bytes > {cfg.max_image_bytes}")
    rendered = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                fmt = (img.format or "unknown").lower()
                if width * height > cfg.max_image_pixels:
                    raise BadImage("decompression_bomb", f"{width}x{height} pixels > {cfg.max_image_pixels}")
                if render is None:
                    phash, dhash = hashes_of(img)  # decodes the whole stream: catches truncated data
                else:
                    phash, dhash, rendered = _render(img, render)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("decompression_bomb", str(e)[:200]) from e
    except Exception as e:  # Pillow raises many types for corrupt data
        detail = re.sub(r" at 0x[0-9a-fA-F]+", "", str(e))[:200]  # no memory addresses: same bytes every run
        raise BadImage("image_undecodable", f"{type(e).__name__}: {detail}") from e
    return ImageInfo(hashlib.sha256(data).hexdigest(), width, height, fmt, phash, dhash, rendered)


def _draft_scale(width: int, height: int, target: tuple[int, int]) -> int:
    """The DCT scale (8, 4, 2 or 1) Pillow's JPEG draft picks for ``target``."""
    scale = min(width // target[0], height // target[1])
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def _render(img: Image.Image, render: Render) -> tuple[int, int, bytes]:
    """(pHash, dHash, square JPEG) of an opened image from one color decode."""
    from mm1data.dedup.image_hash import GRAY_DRAFT, hashes_of_gray

    w0, h0 = img.size
    rgb = decode_at(img, render.size)
    # the hashes from the color decode reduced to the scale the grayscale draft of hashes_of
    # decodes at (the same values within a bit or two, and a quarter of the work at full size)
    factor = _draft_scale(w0, h0, GRAY_DRAFT) // max(1, round(w0 / rgb.width))
    phash, dhash = hashes_of_gray((rgb.reduce(factor) if factor > 1 else rgb).convert("L"))
    return phash, dhash, square_jpeg_of(img, rgb, render.size, render.quality)


def decode_at(img: Image.Image, size: int) -> Image.Image:
    """The pixels of the opened ``img`` for a ``size``² render: a JPEG decoded at the smallest DCT
    scale still at least ``size`` (exact, and up to 8× less work), in RGB, or RGBA when it has alpha."""
    if img.format == "JPEG":
        img.draft("RGB", (size, size))
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    img.load()  # the decode
    mode = "RGBA" if has_alpha else "RGB"
    return img if img.mode == mode else img.convert(mode)


def square_jpeg_of(img: Image.Image, pixels: Image.Image, size: int, quality: int) -> bytes:
    """The one render of an image: ``pixels`` (:func:`decode_at` of the opened ``img``) EXIF-rotated,
    alpha flattened on white, the centered square of the shorter side resized to ``size``² with
    img2dataset's filters (area when shrinking, Lanczos when enlarging), as a JPEG of ``quality``."""
    from PIL import ImageOps

    rgb = ImageOps.exif_transpose(pixels) if img.getexif().get(0x0112, 1) != 1 else pixels
    if rgb.mode == "RGBA":
        flat = Image.new("RGB", rgb.size, (255, 255, 255))
        flat.paste(rgb, mask=rgb.getchannel("A"))
        rgb = flat
    w, h = rgb.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    resample = Image.Resampling.BOX if side >= size else Image.Resampling.LANCZOS
    square = rgb.resize((size, size), resample, box=box)
    out = io.BytesIO()
    square.save(out, format="JPEG", quality=quality)
    return out.getvalue()


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
