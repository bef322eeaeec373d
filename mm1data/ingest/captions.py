"""Caption-pair readers: COCO json + image folder, WebDataset/img2dataset tars, Parquet/CSV.

Formats: ``coco`` (captions json, images from ``spec.images`` or the json's sibling folders),
``webdataset`` (tar of ``<key>.jpg|png|webp`` + ``.txt`` + ``.json``), ``parquet`` / ``csv``
(an image-bytes column if present, else URL + caption rows that become ``no_image_bytes``
rejects: mm1data does not download URLs).
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
    describe_image,
    image_fields,
    read_bytes,
    rejected,
)
from mm1data.schemas import CAPTION_PAIR

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
IMAGE_COLUMNS = ("image", "jpg", "image_bytes", "bytes", "img")
URL_COLUMNS = ("url", "URL", "image_url")
CAPTION_COLUMNS = ("caption", "TEXT", "text", "txt", "alt_text")


def caption_row(
    row_id: str,
    data: bytes | None,
    captions: list[dict],
    url: str | None,
    source: str,
    offset: int,
    cfg: IngestConfig,
) -> dict:
    """A CaptionPair row, or an ingest reject row when the image or captions are unusable."""
    if data is None:
        return rejected(row_id, source, offset, "no_image_bytes", f"url={url}" if url else None)
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
    return {
        "id": row_id,
        **image_fields(data, info),
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


def read_table_captions(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """Caption pairs from Parquet or CSV: an image-bytes column if present, else URL-only rows."""
    table = TableFile(unit.path, "csv" if unit.format == "csv" else "parquet", cfg.rows_per_batch)
    cols = table.columns
    img_col, url_col, cap_col = (
        _first(cols, IMAGE_COLUMNS),
        _first(cols, URL_COLUMNS),
        _first(cols, CAPTION_COLUMNS),
    )
    stem = PurePosixPath(unit.path).stem
    id_col = "id" if "id" in cols else ("key" if "key" in cols else None)

    def records() -> Iterator[tuple]:
        for batch in table.batches():
            data = batch.to_pydict()
            columns = [data[c] if c else [None] * batch.num_rows for c in (id_col, img_col, cap_col, url_col)]
            yield from zip(*columns, strict=True)

    def rows() -> Iterator[dict]:
        for offset, (key, img, text, url) in enumerate(records()):
            row_id = f"{stem}:{key}" if id_col else f"{stem}:{offset}"
            if isinstance(img, dict):  # HF datasets style {"bytes": ..., "path": ...}
                img = img.get("bytes")
            captions = [{"text": str(text), "provenance": "alt_text"}] if text else []
            yield caption_row(row_id, img, captions, url, unit.path, offset, cfg)

    yield from batched(rows(), CAPTION_PAIR, cfg.rows_per_batch)
