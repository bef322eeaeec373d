"""Caption-pair readers: COCO json + image folder, WebDataset/img2dataset tars, caption tables.

Formats: ``coco`` (captions json, images from ``spec.images`` or the json's sibling folders),
``webdataset`` (tar of ``<key>.jpg|png|webp`` + ``.txt`` + ``.json``), ``parquet`` / ``csv`` /
``tsv`` / ``jsonl`` caption tables (an image-bytes column if present, else URL + caption rows).
A URL-only row is a ``no_image_bytes`` reject, unless downloading is on (``cfg.download``): it
is then a *pending* pair (``image`` null, ``url`` set, ``reject`` null) that the download phase
(:mod:`mm1data.download`) fills or rejects. A pending pair's ``image_sha256``, when the table has
a hash column, holds the expected digest as ``"<sha256|md5>:<hex>"``.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa

from mm1data.config import IngestConfig
from mm1data.ingest.base import (
    BadImage,
    TableFile,
    Unit,
    batched,
    decode_utf8,
    describe_image,
    fetchable,
    image_fields,
    open_text,
    read_bytes,
    rejected,
)
from mm1data.schemas import CAPTION_PAIR

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
IMAGE_COLUMNS = ("image", "jpg", "image_bytes", "bytes", "img")
URL_COLUMNS = ("url", "URL", "image_url")  # DataComp, LAION, others
CAPTION_COLUMNS = ("caption", "TEXT", "text", "txt", "alt_text")  # LAION TEXT, DataComp text


def caption_row(
    row_id: str,
    data: bytes | None,
    captions: list[dict],
    url: str | None,
    source: str,
    offset: int,
    cfg: IngestConfig,
    expected: str | None = None,
) -> dict:
    """A CaptionPair row, or an ingest reject row when the image or captions are unusable.

    With ``cfg.download`` set, a row with a fetchable ``url`` and no bytes is a pending pair
    (captions checked now, image left to the download phase); ``expected`` is its digest."""
    pending = data is None and cfg.download is not None and fetchable(url)
    if data is None and not pending:
        return rejected(row_id, source, offset, "no_image_bytes", f"url={url}" if url else None)
    info = None
    if not pending:
        try:
            info = describe_image(data, cfg)
        except BadImage as e:
            return rejected(row_id, source, offset, e.reason, e.detail)
    good = [c for c in captions if c["text"] and c["text"].strip()]
    if not good:
        return rejected(row_id, source, offset, "no_caption", "no non-empty caption")
    too_long = [c for c in good if len(c["text"]) > cfg.max_caption_chars]
    if len(too_long) == len(good):
        n = max(len(c["text"]) for c in too_long)
        return rejected(row_id, source, offset, "caption_too_long", f"{n} chars", float(n))
    good = [c for c in good if len(c["text"]) <= cfg.max_caption_chars]
    image = image_fields(data, info) if info is not None else {"image_sha256": expected}
    return {
        "id": row_id,
        **image,
        "captions": good,
        "url": url,
        "lineage": {"source": source, "offset": offset},
    }


def read_coco(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """One CaptionPair per image of a COCO captions json, its captions with provenance ``human``."""
    doc = json.loads(read_bytes(unit.path))
    by_image: dict[int, list[str]] = defaultdict(list)
    for ann in doc.get("annotations", []):
        by_image[ann["image_id"]].append(ann["caption"])
    folder = unit.images or _default_coco_folder(unit.path)

    def rows() -> Iterator[dict]:
        for offset, img in enumerate(doc.get("images", [])):
            row_id = f"coco:{img['id']}"
            try:
                data = read_bytes(posixpath.join(folder, img["file_name"]))
            except FileNotFoundError:
                yield rejected(row_id, unit.path, offset, "image_missing", img["file_name"])
                continue
            captions = [{"text": t.strip(), "provenance": "human"} for t in by_image.get(img["id"], [])]
            url = img.get("coco_url") or img.get("flickr_url")
            yield caption_row(row_id, data, captions, url, unit.path, offset, cfg)

    yield from batched(rows(), CAPTION_PAIR, cfg.rows_per_batch)


def _default_coco_folder(json_path: str) -> str:
    """``annotations/captions_val2017.json`` -> ``<root>/val2017``."""
    p = PurePosixPath(json_path)
    split = p.stem.split("_")[-1]
    return str(p.parent.parent / split)


def tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of a WebDataset tar, read as a stream (members of a
    sample are consecutive, as the format requires), so memory holds one sample at a time. A
    damaged tar raises ``TarDamaged`` after the last whole sample; the sample being read is cut."""
    key, parts = None, {}
    try:
        with fsspec.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name, _, ext = member.name.rpartition("/")[2].partition(".")
                prefix = member.name.rpartition("/")[0]
                full_key = f"{prefix}/{name}" if prefix else name
                f = tar.extractfile(member)
                if f is None:
                    continue
                if full_key != key:
                    if key is not None:
                        yield key, parts
                    key, parts = full_key, {}
                parts[ext.lower()] = f.read()
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError) as e:
        raise TarDamaged(key, f"{type(e).__name__}: {e}") from e
    if key is not None:
        yield key, parts


class TarDamaged(Exception):
    """A tar that ends or breaks mid-stream; ``cut`` is the key of the sample being read."""

    def __init__(self, cut: str | None, detail: str) -> None:
        super().__init__(detail)
        self.cut, self.detail = cut, detail


def read_webdataset(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """Caption pairs from a WebDataset / img2dataset tar, streamed; a truncated tar keeps what was
    read and adds one ``tar_truncated`` reject for the unreadable rest."""
    stem = PurePosixPath(unit.path).name

    def rows() -> Iterator[dict]:
        count, samples = 0, tar_samples(unit.path)
        while True:
            try:
                key, parts = next(samples)
            except StopIteration:
                return
            except TarDamaged as e:
                yield rejected(f"{stem}:{e.cut or '#truncated'}", unit.path, count, "tar_truncated", e.detail)
                return
            offset, count = count, count + 1
            row_id = f"{stem}:{key}"
            data = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
            meta: dict = {}
            if "json" in parts:
                try:
                    meta = json.loads(parts["json"].decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    yield rejected(row_id, unit.path, offset, "invalid_json", "sample .json member")
                    continue
            try:
                text = parts["txt"].decode("utf-8") if "txt" in parts else meta.get("caption")
            except UnicodeDecodeError:
                yield rejected(row_id, unit.path, offset, "invalid_utf8", "sample .txt member")
                continue
            if data is None and not (meta.get("url") or text):
                yield rejected(row_id, unit.path, offset, "missing_field", f"members: {sorted(parts)}")
                continue
            captions = [{"text": text, "provenance": "alt_text"}] if text else []
            yield caption_row(row_id, data, captions, meta.get("url"), unit.path, offset, cfg)

    yield from batched(rows(), CAPTION_PAIR, cfg.rows_per_batch)


def _first(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def table_columns(path: str, fmt: str) -> list[str]:
    """The column names of a caption table (Parquet schema, CSV/TSV header, first JSON line)."""
    if fmt != "jsonl":
        return TableFile(path, fmt, 1).columns
    with open_text(path) as f:
        first = f.readline()
    try:
        value = json.loads(first)
    except ValueError:
        return []
    return list(value) if isinstance(value, dict) else []


def _jsonl_batches(unit: Unit, cfg: IngestConfig, bad: dict[int, str]) -> Iterator[pa.RecordBatch]:
    """Record batches (string columns) of a JSON-lines caption table; unreadable lines go to
    ``bad`` as ``{offset: reason}`` and become empty rows, so offsets stay line numbers."""
    buf: list[dict] = []

    def flush() -> pa.RecordBatch:
        names = list(dict.fromkeys(k for r in buf for k in r))
        cols = {n: pa.array([r.get(n) for r in buf], pa.string()) for n in names}
        return pa.RecordBatch.from_pydict(cols) if cols else pa.RecordBatch.from_pylist([{}] * len(buf))

    with open_text(unit.path) as f:
        for offset, raw in enumerate(f):
            obj: dict = {}
            if not raw.strip():
                bad[offset] = "empty_line"
            else:
                try:
                    value = json.loads(decode_utf8(raw))
                    if not isinstance(value, dict):
                        raise ValueError("not a JSON object")
                    obj = {k: _text(v) for k, v in value.items() if not isinstance(v, (dict, list))}
                except UnicodeDecodeError:
                    bad[offset] = "invalid_utf8"
                except ValueError:
                    bad[offset] = "invalid_json"
            buf.append(obj)
            if len(buf) >= cfg.rows_per_batch:
                yield flush()
                buf = []
    if buf:
        yield flush()


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _expected_digest(value: object, hash_type: str) -> str | None:
    """``"<type>:<hex>"`` for a hash-column value, or None when the value is empty."""
    if value is None or value == "":
        return None
    return f"{hash_type}:{str(value).strip().lower()}"


def read_table_captions(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """Caption pairs from Parquet, CSV, TSV or JSON lines: an image-bytes column if present, else
    URL-only rows (pending when downloading is on, ``no_image_bytes`` rejects otherwise)."""
    dl = cfg.download
    stem = PurePosixPath(unit.path).stem
    bad: dict[int, str] = {}
    if unit.format == "jsonl":
        batches = _jsonl_batches(unit, cfg, bad)
    else:
        batches = TableFile(unit.path, unit.format, cfg.rows_per_batch, unit.row_groups).batches()

    def records() -> Iterator[tuple]:
        names: tuple | None = None
        for batch in batches:
            if names is None or any(n and n not in batch.schema.names for n in names):
                names = _columns(batch.schema.names, dl)
            data = batch.to_pydict()
            columns = [data.get(c, [None] * batch.num_rows) if c else [None] * batch.num_rows for c in names]
            yield from zip(*columns, strict=True)

    def rows() -> Iterator[dict]:
        for offset, (key, img, text, url, digest) in enumerate(records(), unit.first_row):
            row_id = f"{stem}:{key}" if key is not None else f"{stem}:{offset}"
            reason = bad.pop(offset, None)
            if reason is not None:
                yield rejected(row_id, unit.path, offset, reason)
                continue
            if isinstance(img, dict):  # HF datasets style {"bytes": ..., "path": ...}
                img = img.get("bytes")
            captions = [{"text": str(text), "provenance": "alt_text"}] if text else []
            url = str(url).strip() if url is not None else None
            expected = _expected_digest(digest, dl.hash_type) if dl is not None else None
            yield caption_row(row_id, img, captions, url or None, unit.path, offset, cfg, expected)

    yield from batched(rows(), CAPTION_PAIR, cfg.rows_per_batch)


def _columns(cols: list[str], dl) -> tuple[str | None, ...]:
    """(id, image, caption, url, hash) column names of a caption table (None when absent)."""
    id_col = "id" if "id" in cols else ("key" if "key" in cols else None)
    url_col = dl.url_col if dl is not None and dl.url_col else _first(cols, URL_COLUMNS)
    cap_col = dl.caption_col if dl is not None and dl.caption_col else _first(cols, CAPTION_COLUMNS)
    hash_col = dl.hash_col if dl is not None else None
    return id_col, _first(cols, IMAGE_COLUMNS), cap_col, url_col, hash_col
