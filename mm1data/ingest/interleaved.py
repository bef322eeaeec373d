"""Interleaved-document readers: MMC4 jsonl, OBELICS-style Parquet, Kiwix ZIM (HTML articles).

All map onto ``InterleavedDoc``: an ordered list of text and image items. An image that cannot
be had (missing file, corrupt bytes) becomes an item-level reject in ``item_rejects`` and the doc
is kept if any item is left; a doc with nothing left is rejected ``empty_document``. With
downloading on (``cfg.download``), an image given only by an http(s) URL (MMC4 ``raw_url``,
OBELICS image URLs) is a *pending* item (kind ``image``, ``image`` null, ``url`` set) that the
download phase (:mod:`mm1data.download`) fills or moves to ``item_rejects``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import PurePosixPath
from urllib.parse import unquote

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
    reject_info,
    rejected,
)
from mm1data.schemas import INTERLEAVED_DOC


def text_item(text: str, position: int) -> dict:
    """A text item."""
    return {"kind": "text", "text": text, "position": position}


def image_item(data: bytes | None, url: str | None, position: int, cfg: IngestConfig) -> dict:
    """An image item, or an item-reject dict (``{"reject": ...}``) when the bytes are unusable;
    a pending item (no bytes yet) when downloading is on and ``url`` is fetchable."""
    if data is None and cfg.download is not None and fetchable(url):
        return {"kind": "image", "url": url.strip(), "position": position}
    if data is None:
        return {"reject": reject_info("image_missing", url)}
    try:
        info = describe_image(data, cfg)
    except BadImage as e:
        return {"reject": reject_info(e.reason, f"{url}: {e.detail}")}
    return {"kind": "image", **image_fields(data, info), "url": url, "position": position}


def doc_row(
    row_id: str, items: list[dict], url: str | None, source: str, offset: int, cfg: IngestConfig
) -> dict:
    """An InterleavedDoc row from item dicts (item rejects among them are moved to ``item_rejects``)."""
    kept, item_rejects = [], []
    for item in items:
        if "reject" in item:
            item_rejects.append(item["reject"])
        elif item["kind"] == "text" and len(item["text"]) > cfg.max_text_chars:
            item_rejects.append(reject_info("text_too_long", f"{len(item['text'])} chars"))
        else:
            kept.append(item)
    row = {
        "id": row_id,
        "items": kept,
        "url": url,
        "lineage": {"source": source, "offset": offset},
        "item_rejects": item_rejects,
    }
    if not kept:
        row["items"] = None
        row["reject"] = reject_info("empty_document", f"{len(item_rejects)} items rejected")
    return row


def read_mmc4(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """MMC4 jsonl: ``text_list`` sentences with images inserted before their
    ``matched_text_index``; image bytes from ``unit.images/<image_name>`` when present."""
    stem = PurePosixPath(unit.path).name.split(".")[0]

    def rows() -> Iterator[dict]:
        with open_text(unit.path) as f:
            for offset, raw in enumerate(f):
                row_id = f"{stem}:{offset}"
                if not raw.strip():
                    yield rejected(row_id, unit.path, offset, "empty_line")
                    continue
                try:
                    doc = json.loads(decode_utf8(raw))
                except UnicodeDecodeError:
                    yield rejected(row_id, unit.path, offset, "invalid_utf8")
                    continue
                except json.JSONDecodeError as e:
                    yield rejected(row_id, unit.path, offset, "invalid_json", str(e)[:200])
                    continue
                if not isinstance(doc, dict) or not isinstance(doc.get("text_list"), list):
                    yield rejected(row_id, unit.path, offset, "missing_field", "text_list")
                    continue
                yield doc_row(row_id, _mmc4_items(doc, unit, cfg), doc.get("url"), unit.path, offset, cfg)

    yield from batched(rows(), INTERLEAVED_DOC, cfg.rows_per_batch)


def _mmc4_items(doc: dict, unit: Unit, cfg: IngestConfig) -> list[dict]:
    images_at: dict[int, list[dict]] = {}
    for info in doc.get("image_info") or []:
        images_at.setdefault(int(info.get("matched_text_index", 0)), []).append(info)
    items: list[dict] = []
    position = 0
    for i, sentence in enumerate(doc["text_list"]):
        for info in images_at.get(i, []):
            data = None
            if unit.images and info.get("image_name"):
                try:
                    data = read_bytes(posixpath.join(unit.images, info["image_name"]))
                except FileNotFoundError:
                    data = None
            items.append(image_item(data, info.get("raw_url"), position, cfg))
            position += 1
        if isinstance(sentence, str) and sentence.strip():
            items.append(text_item(sentence, position))
        position += 1
    return items


def read_obelics(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """OBELICS-style Parquet: parallel ``texts`` / ``images`` lists where exactly one is non-null
    per position; ``images`` holds bytes (or a dict with ``bytes``) or URLs (then ``image_missing``)."""
    table = TableFile(unit.path, "parquet", cfg.rows_per_batch, unit.row_groups)
    stem = PurePosixPath(unit.path).stem
    cols = table.columns

    def rows() -> Iterator[dict]:
        offset = unit.first_row
        for batch in table.batches():
            data = batch.to_pydict()
            for i in range(batch.num_rows):
                row_id = f"{stem}:{data['id'][i]}" if "id" in cols else f"{stem}:{offset}"
                texts = data["texts"][i] if "texts" in cols else None
                images = data["images"][i] if "images" in cols else None
                if texts is None or images is None:
                    yield rejected(row_id, unit.path, offset, "missing_field", "texts/images")
                    offset += 1
                    continue
                urls = data["image_urls"][i] if "image_urls" in cols else [None] * len(images)
                items = []
                for pos, (text, image) in enumerate(zip(texts, images, strict=False)):
                    if text is not None:
                        items.append(text_item(text, pos))
                    elif isinstance(image, (bytes, dict)):
                        raw = image.get("bytes") if isinstance(image, dict) else image
                        items.append(image_item(raw, urls[pos] if urls else None, pos, cfg))
                    elif isinstance(image, str):
                        items.append(image_item(None, image, pos, cfg))
                url = data["url"][i] if "url" in cols else None
                yield doc_row(row_id, items, url, unit.path, offset, cfg)
                offset += 1

    yield from batched(rows(), INTERLEAVED_DOC, cfg.rows_per_batch)


BLOCK_TAGS = {
    "p",
    "div",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "br",
    "dd",
    "dt",
    "figcaption",
    "table",
}
SKIP_TAGS = {"script", "style", "head", "noscript"}


class _ArticleParser(HTMLParser):
    """Collects text runs and ``<img src>`` in reading order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[tuple[str, str]] = []  # ("text", chunk) / ("image", src) / ("break", "")
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIP_TAGS:
            self.skip += 1
        elif tag == "img":
            src = dict(attrs).get("src")
            if src:
                self.parts.append(("image", src))
        elif tag in BLOCK_TAGS:
            self.parts.append(("break", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag in BLOCK_TAGS:
            self.parts.append(("break", ""))

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(("text", data))


def html_to_items(html: str) -> list[tuple[str, str]]:
    """Reading-order ``("text", paragraph_text)`` and ``("image", src)`` pairs of an HTML page."""
    parser = _ArticleParser()
    parser.feed(html)
    out: list[tuple[str, str]] = []
    paragraph: list[str] = []
    paragraphs: list[str] = []

    def flush_paragraph() -> None:
        line = " ".join("".join(paragraph).split())
        if line:
            paragraphs.append(line)
        paragraph.clear()

    def flush_text() -> None:
        flush_paragraph()
        if paragraphs:
            out.append(("text", "\n".join(paragraphs)))
            paragraphs.clear()

    for kind, value in parser.parts:
        if kind == "text":
            paragraph.append(value)
        elif kind == "break":
            flush_paragraph()
        else:
            flush_text()
            out.append(("image", value))
    flush_text()
    return out


def read_zim(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """Kiwix ZIM archive: every HTML article becomes an interleaved doc in reading order, its
    ``<img>`` bytes taken from the archive (SVG and other formats Pillow cannot read are item
    rejects)."""
    from libzim.reader import Archive

    archive = Archive(unit.path)
    stem = PurePosixPath(unit.path).stem
    main_path = archive.main_entry.get_item().path if archive.has_main_entry else None

    def rows() -> Iterator[dict]:
        offset = -1
        for entry_id in range(archive.all_entry_count):
            entry = archive._get_entry_by_id(entry_id)
            if entry.is_redirect:
                continue
            item = entry.get_item()
            if not item.mimetype.startswith("text/html"):
                continue
            offset += 1
            row_id = f"{stem}:{entry.path}"
            if entry.path == main_path:
                yield rejected(row_id, unit.path, offset, "not_an_article", "the archive's main (index) page")
                continue
            try:
                html = decode_utf8(bytes(item.content))
            except UnicodeDecodeError:
                yield rejected(row_id, unit.path, offset, "invalid_utf8")
                continue
            items: list[dict] = []
            for pos, (kind, value) in enumerate(html_to_items(html)):
                if kind == "text":
                    items.append(text_item(value, pos))
                    continue
                target = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), unquote(value)))
                data = None
                try:
                    data = bytes(archive.get_entry_by_path(target).get_item().content)
                except KeyError:
                    data = None
                items.append(image_item(data, value, pos, cfg))
            yield doc_row(row_id, items, f"zim://{stem}/{entry.path}", unit.path, offset, cfg)

    yield from batched(rows(), INTERLEAVED_DOC, cfg.rows_per_batch)
