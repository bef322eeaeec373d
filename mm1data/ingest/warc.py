"""WARC reader: web crawl records → interleaved documents (FastWARC + :mod:`mm1data.ingest.html`).

Every WARC record that the parser can delimit becomes exactly one row, so read = kept +
rejected per record:

- an HTML ``response``/``resource`` record (by Content-Type, or by sniffing when the type is
  missing or generic) becomes an :data:`~mm1data.schemas.INTERLEAVED_DOC` whose items are the
  page's text and ``<img>`` in reading order; lineage is (WARC path, record offset) and
  ``metadata`` holds the WARC-Record-ID, date, HTTP status and charset;
- every other record is a reject with a specific reason: ``not_a_response`` (warcinfo, request,
  metadata, ...), ``not_html`` (images, scripts, ...), ``html_revisit`` (a revisit of a page: its
  content is the original's), ``http_redirect`` / ``http_error`` (3xx / 4xx-5xx pages),
  ``page_too_large``, ``warc_truncated`` (the record ends before its Content-Length),
  ``warc_digest_mismatch`` (WARC-Block-Digest does not match), ``bad_http_headers``,
  ``bad_content_encoding``, ``invalid_encoding``, ``html_unparseable``, ``empty_document``;
- bytes the parser cannot delimit (a corrupt gzip member, a garbled header) become one reject
  ``warc_bad_gzip`` / ``warc_bad_record`` for the skipped range; reading resumes at the next
  gzip member or ``WARC/1.x`` line, so one bad member does not lose the rest of the file.

Image bytes come from image records of the same WARC file (by resolved URL, scheme-insensitive,
fragment dropped; a ``revisit`` is followed to its original by payload digest, a 3xx record to
its Location). The file is read twice: a first pass keeps a small index of the image-like records
(URL → offset and record id, payload digest → offset; never bytes), the second emits documents
and seeks to an image record when a page needs it, so memory does not grow with the file (it
grows with the number of image records, which Common Crawl WARCs do not have). Images not in the
file go through :func:`mm1data.ingest.interleaved.image_item` without bytes: an ``image_missing``
item reject, or a pending item for the download phase when downloading is on. Images in other
files of a WARC set are not looked up (that needs a join across files).
"""

from __future__ import annotations

import codecs
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO
from urllib.parse import urldefrag, urljoin, urlsplit

import pyarrow as pa
from fastwarc.warc import ArchiveIterator, WarcRecordType

from mm1data.config import IngestConfig
from mm1data.ingest.base import Unit, batched, reject_info, rejected
from mm1data.ingest.html import ImageRef, html_to_items
from mm1data.ingest.interleaved import doc_row, image_item, text_item
from mm1data.io.fs import fsspec_fs
from mm1data.schemas import INTERLEAVED_DOC

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
GENERIC_TYPES = frozenset(
    {"", "text/plain", "application/octet-stream", "unknown/unknown", "application/unknown"}
)
"""Content types that say nothing: the payload is sniffed (WHATWG MIME sniffing, HTML signatures)."""
IMAGE_LIKE_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown"})
PAGE_TYPES = (WarcRecordType.response, WarcRecordType.resource, WarcRecordType.revisit)

_HTML_SIGNATURES = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<body",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a ",
    b"<style",
    b"<title",
    b"<b ",
    b"<br",
    b"<p ",
    b"<p>",
    b"<!--",
)
_BINARY_SIGNATURES = (
    b"%PDF-",
    b"\x89PNG",
    b"GIF8",
    b"\xff\xd8\xff",
    b"PK\x03\x04",
    b"\x1f\x8b",
    b"RIFF",
    b"\x00\x00\x01\x00",
    b"OggS",
    b"ID3",
    b"wOFF",
    b"wOF2",
)
_META_CHARSET = re.compile(rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)
_WHATWG_ALIASES = {
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "iso8859-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "x-sjis": "shift_jis",
    "euc-kr": "cp949",
    "tis-620": "cp874",
    "iso-8859-9": "cp1254",
    "x-euc-jp": "euc_jp",
}
"""Charset labels browsers read as a superset (WHATWG Encoding Standard, "names and labels")."""
MAX_BAD_CHARS = 0.01
"""A declared charset that leaves at most this share of undecodable bytes is still used."""
MAX_RESYNCS = 100
"""Damaged regions skipped per file before the rest of the file is given up as one reject."""


class PageReject(Exception):
    """A record that does not become a document; ``reason`` is the reject reason."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


# --- content: transfer and content codings, sniffing, charset ------------------------------------


def dechunk(data: bytes) -> bytes | None:
    """Undo HTTP/1.1 chunked transfer coding; None when ``data`` is not chunked (WARC writers
    often store the de-chunked body but keep the ``Transfer-Encoding`` header)."""
    out, i = [], 0
    while True:
        j = data.find(b"\r\n", i)
        if j < 0:
            return None
        size_field = data[i:j].split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            return None
        if size == 0:
            return b"".join(out)
        out.append(data[j + 2 : j + 2 + size])
        i = j + 2 + size + 2
        if i > len(data):  # truncated in a chunk: keep what arrived
            return b"".join(out)


def decode_content(payload: bytes, headers, limit: int) -> bytes:
    """The payload with its transfer and content codings removed, at most ``limit + 1`` bytes.

    Raises :class:`PageReject` ``bad_content_encoding`` when a declared coding cannot be undone.
    """
    te = (headers.get("Transfer-Encoding") or "").lower()
    if "chunked" in te:
        payload = dechunk(payload) or payload
    ce = (headers.get("Content-Encoding") or "").strip().lower()
    if ce in ("", "identity", "none", "utf-8", "utf8"):
        return payload
    try:
        if ce in ("gzip", "x-gzip", "deflate"):
            if ce == "deflate" and payload[:1] != b"\x78":
                d = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some servers send
            else:
                d = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
            return d.decompress(payload, limit + 1)
        if ce == "br":
            import brotli

            out = brotli.Decompressor().process(payload)
            return out[: limit + 1]
    except Exception as e:  # zlib.error, brotli.error: any failure means the coding cannot be undone
        if payload[:1] == b"<":  # the body was stored decoded; the header is stale
            return payload
        raise PageReject("bad_content_encoding", f"{ce}: {type(e).__name__}") from e
    if payload[:1] == b"<":
        return payload
    raise PageReject("bad_content_encoding", f"unsupported Content-Encoding {ce!r}")


def sniff_html(data: bytes) -> bool:
    """Whether bytes look like HTML (WHATWG MIME sniffing: an HTML tag among the first bytes)."""
    head = data[:1024].lstrip(b" \t\r\n\x0c\xef\xbb\xbf").lower()
    return head.startswith(_HTML_SIGNATURES) or (b"<html" in head and b"\x00" not in head)


def looks_binary(data: bytes) -> bool:
    """Whether a body declared HTML is really something else (a known binary signature, NULs)."""
    head = data[:1024]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 BOMs contain NULs legitimately
        return False
    return head.startswith(_BINARY_SIGNATURES) or b"\x00" in head


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    label = _WHATWG_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_html(body: bytes, header_charset: str | None) -> tuple[str, str]:
    """``(text, encoding)`` of an HTML body: the BOM, then the HTTP charset, then the ``<meta>``
    charset, then UTF-8, then detection (charset-normalizer). A declared charset that leaves at
    most 1 % undecodable bytes is used with replacement characters.

    Raises :class:`PageReject` ``invalid_encoding`` when nothing decodes the body.
    """
    for bom, enc in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if body.startswith(bom):
            try:
                return body.decode(enc), enc
            except UnicodeDecodeError:
                break
    meta = _META_CHARSET.search(body[:4096])
    declared = [
        c for c in (_codec(header_charset), _codec(meta.group(1).decode("ascii")) if meta else None) if c
    ]
    declared = list(dict.fromkeys(declared))
    for enc in [*declared, "utf-8"]:
        try:
            return body.decode(enc), enc
        except (UnicodeDecodeError, LookupError):
            continue
    for enc in declared:
        text = body.decode(enc, errors="replace")
        if text.count("\ufffd") <= MAX_BAD_CHARS * max(1, len(text)):
            return text, enc
    from charset_normalizer import from_bytes

    best = from_bytes(body[: 1 << 16]).best()
    enc = _codec(best.encoding) if best is not None else None
    if enc:
        text = body.decode(enc, errors="replace")
        if text.count("\ufffd") <= MAX_BAD_CHARS * max(1, len(text)):
            return text, enc
    raise PageReject("invalid_encoding", f"declared {declared or 'nothing'}, detected {enc or 'nothing'}")


# --- the per-file image index ---------------------------------------------------------------------


def url_key(url: str) -> str | None:
    """Lookup key of a URL: scheme and host in lower case, default port dropped, path and query;
    the fragment is ignored (it is never sent to the server)."""
    try:
        parts = urlsplit(urldefrag(url.strip())[0])
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not host or scheme not in ("http", "https"):
        return None
    netloc = host if port in (None, 80, 443) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}{'?' + parts.query if parts.query else ''}"


def _other_scheme(key: str) -> str:
    return "https" + key[4:] if key.startswith("http:") else "http" + key[5:]


def target_uri(r) -> str:
    """A record's WARC-Target-URI, without the angle brackets some writers (wget, WARC/1.0 era) add."""
    return (r.headers.get("WARC-Target-URI") or "").strip().strip("<>").strip()


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _image_like(mime: str) -> bool:
    return mime.startswith("image/") or mime in IMAGE_LIKE_TYPES


@dataclass
class ImageIndex:
    """Image-like records of one WARC file: where they are, never their bytes."""

    by_url: dict[str, tuple[int, str]] = field(default_factory=dict)  # key → (offset, record id)
    by_digest: dict[str, tuple[int, str]] = field(default_factory=dict)  # payload digest → same
    revisits: dict[str, tuple[str | None, str | None]] = field(
        default_factory=dict
    )  # key → (digest, refers-to key)
    redirects: dict[str, str] = field(default_factory=dict)  # key → Location key

    @classmethod
    def build(cls, stream: IO[bytes]) -> ImageIndex:
        """One pass over the file's response, resource and revisit headers (payloads skipped).
        A damaged file is indexed up to the damage."""
        index = cls()
        try:
            for r in ArchiveIterator(
                stream,
                record_types=PAGE_TYPES[0] | PAGE_TYPES[1] | PAGE_TYPES[2],
                parse_http=True,
                quirks_mode=True,
            ):
                index.add(r)
        except (OSError, ValueError):  # damage: index what came before it
            pass
        return index

    def add(self, r) -> None:
        """Index one record if it may hold an image."""
        uri = target_uri(r)
        key = url_key(uri)
        if key is None:
            return
        if r.is_http:
            mime, status = _mime(r.http_content_type), r.http_headers.status_code
        else:
            mime, status = _mime(r.headers.get("Content-Type")), 200
        rid = r.record_id or ""
        digest = r.headers.get("WARC-Payload-Digest")
        if r.record_type == WarcRecordType.revisit:
            if _image_like(mime) and key not in self.revisits:
                refers = url_key((r.headers.get("WARC-Refers-To-Target-URI") or "").strip().strip("<>"))
                self.revisits[key] = (digest, refers)
            return
        if status is not None and 300 <= status < 400:
            location = r.http_headers.get("Location")
            try:
                target = url_key(urljoin(uri, location)) if location else None
            except ValueError:
                target = None
            if target and target != key:
                self.redirects.setdefault(key, target)
            return
        if (status is None or status == 200) and _image_like(mime):
            self.by_url.setdefault(key, (r.stream_pos, rid))
            if digest:
                self.by_digest.setdefault(digest, (r.stream_pos, rid))

    def locate(self, url: str) -> tuple[int, str] | None:
        """(offset, record id) of the record holding ``url``'s bytes, following revisits (by
        payload digest, else by WARC-Refers-To-Target-URI) and up to five redirects; the same URL
        under the other scheme (an http capture for an https page) is the fallback."""
        key = url_key(url)
        if key is None:
            return None
        return self._locate(key) or self._locate(_other_scheme(key))

    def _locate(self, key: str | None) -> tuple[int, str] | None:
        for _ in range(6):
            if key is None:
                return None
            if key in self.by_url:
                return self.by_url[key]
            if key in self.revisits:
                digest, refers = self.revisits[key]
                if digest and digest in self.by_digest:
                    return self.by_digest[digest]
                if refers and refers in self.by_url:
                    return self.by_url[refers]
                return None
            key = self.redirects.get(key)
        return None


# --- reading --------------------------------------------------------------------------------------


def _open(path: str) -> IO[bytes]:
    fs, inner = fsspec_fs(path)
    return fs.open(inner, "rb")


def _stem(path: str) -> str:
    return PurePosixPath(path).name.split(".")[0]


class _ImageFetcher:
    """Reads image payloads from the file by offset, through its own handle (opened on first use)."""

    def __init__(self, path: str, index: ImageIndex, cfg: IngestConfig) -> None:
        self.path, self.index, self.cfg = path, index, cfg
        self.handle: IO[bytes] | None = None

    def fetch(self, ref: ImageRef) -> tuple[bytes | None, str | None]:
        """(bytes, the candidate URL they were found under), or (None, preferred URL)."""
        for url in ref.candidates:
            where = self.index.locate(url)
            if where is not None:
                data = self._read(*where)
                if data is not None:
                    return data, url
        return None, ref.url

    def _read(self, offset: int, record_id: str) -> bytes | None:
        if self.handle is None:
            self.handle = _open(self.path)
        try:
            self.handle.seek(offset)
            r = next(iter(ArchiveIterator(self.handle, parse_http=True, quirks_mode=True)))
            if r.stream_pos != offset or (r.record_id or "") != record_id:
                return None  # not seekable (one gzip member for the whole file)
            data = r.reader.read(self.cfg.max_image_bytes + 1)
            return decode_content(data, r.http_headers, self.cfg.max_image_bytes) if r.is_http else data
        except (OSError, ValueError, StopIteration, PageReject):
            return None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _record_type(r) -> str:
    return str(r.record_type)


class WarcRows:
    """The rows of one WARC file (see the module docstring)."""

    def __init__(self, unit: Unit, cfg: IngestConfig) -> None:
        self.unit, self.cfg = unit, cfg
        self.stem = _stem(unit.path)
        self.last_pos = -1
        self.repeat = 0

    def row_id(self, pos: int) -> str:
        """``<stem>:<offset>``; records sharing an offset (one gzip member for several records)
        get ``+k``."""
        self.repeat = self.repeat + 1 if pos == self.last_pos else 0
        self.last_pos = pos
        return f"{self.stem}:{pos}" + (f"+{self.repeat}" if self.repeat else "")

    def __iter__(self) -> Iterator[dict]:
        with _open(self.unit.path) as f:
            head = f.read(2)
            gzipped = head == b"\x1f\x8b"
            f.seek(0)
            index = ImageIndex.build(f)
        fetcher = _ImageFetcher(self.unit.path, index, self.cfg)
        try:
            with _open(self.unit.path) as f:
                yield from self._records(f, gzipped, fetcher)
        finally:
            fetcher.close()

    def _records(self, f: IO[bytes], gzipped: bool, fetcher: _ImageFetcher) -> Iterator[dict]:
        """Rows of every record from offset 0; a damaged record becomes one reject at its offset
        and reading resumes at the next record start after it."""
        start = 0
        for _ in range(MAX_RESYNCS + 1):
            f.seek(start)
            done, current = start - 1, None
            try:
                for r in ArchiveIterator(f, parse_http=False, quirks_mode=True):
                    current = r.stream_pos
                    row = self.record_row(r, fetcher)
                    done, current = current, None
                    yield row
                return
            except OSError as e:
                message = str(e).lower()
                reason = "warc_bad_gzip" if "gzip" in message or "deflate" in message else "warc_bad_record"
                # the damaged record: the one being read, else the next record start after the last good one
                bad = current if current is not None else _next_record_start(f, done + 1, gzipped)
                if bad is None:  # the damage is in the tail after the last record start
                    bad, nxt = done + 1, None
                else:
                    nxt = _next_record_start(f, bad + 1, gzipped)
                end = "the end of the file" if nxt is None else f"offset {nxt}"
                detail = f"{e}; bytes from {bad} to {end} skipped"
                row_id = getattr(e, "row_id", None) if current is not None else None
                yield rejected(row_id or self.row_id(bad), self.unit.path, bad, reason, detail[:300])
                if nxt is None:
                    return
                start = nxt
        yield rejected(
            self.row_id(start),
            self.unit.path,
            start,
            "warc_bad_record",
            f"more than {MAX_RESYNCS} damaged regions; rest of the file skipped",
        )

    def record_row(self, r, fetcher: _ImageFetcher) -> dict:
        """The row of one record (a document or a reject)."""
        pos = r.stream_pos
        row_id = self.row_id(pos)
        try:
            return self._page(r, row_id, pos, fetcher)
        except PageReject as e:
            return rejected(row_id, self.unit.path, pos, e.reason, (e.detail or "")[:300] or None)
        except OSError as e:
            e.row_id = row_id  # the stream itself is damaged: _records rejects this record and resyncs
            raise
        except Exception as e:  # noqa: BLE001 - one odd record must not stop the file
            return rejected(row_id, self.unit.path, pos, "warc_bad_record", f"{type(e).__name__}: {e}"[:300])

    def _page(self, r, row_id: str, pos: int, fetcher: _ImageFetcher) -> dict:
        cfg = self.cfg
        rtype = r.record_type
        if rtype not in PAGE_TYPES:
            raise PageReject("not_a_response", _record_type(r))
        uri = target_uri(r)
        declared = r.content_length
        truncated = digest_ok = None
        if (
            r.headers.get("WARC-Block-Digest")
            and declared <= cfg.max_html_bytes
            and rtype != WarcRecordType.revisit
        ):
            digest_ok = r.verify_block_digest(consume=False)
            truncated = r.content_length < declared
        if r.is_http:
            try:
                r.parse_http(quirks_mode=True)
            except OSError as e:
                raise PageReject("warc_truncated" if truncated else "bad_http_headers", str(e)) from e
            headers = r.http_headers
            mime, status, charset = _mime(r.http_content_type), headers.status_code, r.http_charset
        else:
            headers = {}
            mime, status, charset = _mime(r.headers.get("Content-Type")), None, None
        if rtype == WarcRecordType.revisit:
            if mime in HTML_TYPES:
                raise PageReject("html_revisit", r.headers.get("WARC-Refers-To-Target-URI") or uri)
            raise PageReject("not_html", f"revisit of {mime or 'unknown type'}")
        if mime not in HTML_TYPES and mime not in GENERIC_TYPES:
            raise PageReject("not_html", mime)
        payload = r.reader.read(cfg.max_html_bytes + 1)
        if truncated or len(payload) < min(r.content_length, cfg.max_html_bytes + 1):
            raise PageReject("warc_truncated", f"{len(payload)} of {r.content_length} payload bytes")
        if mime not in HTML_TYPES and not sniff_html(payload):
            raise PageReject("not_html", mime or "no Content-Type, not HTML by sniffing")
        if status is not None and 300 <= status < 400:
            raise PageReject("http_redirect", f"{status} to {headers.get('Location') or '?'}")
        if status is not None and status >= 400:
            raise PageReject("http_error", str(status))
        if len(payload) > cfg.max_html_bytes or declared > cfg.max_html_bytes + 64 * 1024:
            raise PageReject("page_too_large", f"{max(declared, len(payload))} bytes > {cfg.max_html_bytes}")
        if digest_ok is False:
            raise PageReject("warc_digest_mismatch", "WARC-Block-Digest does not match the block")
        body = decode_content(payload, headers, cfg.max_html_bytes) if r.is_http else payload
        if len(body) > cfg.max_html_bytes:
            raise PageReject("page_too_large", f"more than {cfg.max_html_bytes} bytes after Content-Encoding")
        if looks_binary(body):
            raise PageReject("not_html", "declared HTML, binary content")
        html, encoding = decode_html(body, charset)
        try:
            parts = html_to_items(html, uri)
        except Exception as e:  # noqa: BLE001 - any parser failure is this page's reject
            raise PageReject("html_unparseable", f"{type(e).__name__}: {e}") from e
        items = [self._item(kind, value, pos_, fetcher) for pos_, (kind, value) in enumerate(parts)]
        row = doc_row(row_id, items, uri or None, self.unit.path, pos, cfg)
        row["metadata"] = json.dumps(
            {
                "warc_record_id": r.record_id,
                "warc_date": r.headers.get("WARC-Date"),
                "warc_type": _record_type(r),
                "http_status": status,
                "content_type": mime or None,
                "charset": encoding,
                "warc_truncated": r.headers.get("WARC-Truncated"),
            },
            sort_keys=True,
        )
        return row

    def _item(self, kind: str, value, position: int, fetcher: _ImageFetcher) -> dict:
        if kind == "text":
            return text_item(value, position)
        ref: ImageRef = value
        if ref.problem == "no_src":
            return {"reject": reject_info("image_no_src", f"position {position}: <img> without a usable URL")}
        if ref.problem == "bad_data_uri":
            return {"reject": reject_info("image_bad_data_uri", f"position {position}: {ref.url}")}
        if ref.data is not None:
            data, url = ref.data, ref.url
        else:
            data, url = fetcher.fetch(ref)
        item = image_item(data, url, position, self.cfg)
        if "reject" not in item:
            item.update(alt=ref.alt, rendered_width=ref.width, rendered_height=ref.height)
        return item


def _next_record_start(f: IO[bytes], start: int, gzipped: bool, chunk: int = 1 << 20) -> int | None:
    """Offset of the next gzip member (or ``WARC/1.`` line) at or after ``start``, or None."""
    marker = b"\x1f\x8b\x08" if gzipped else b"WARC/1."
    f.seek(start)
    pos, tail = start, b""
    while True:
        block = f.read(chunk)
        if not block:
            return None
        data = tail + block
        i = data.find(marker)
        while i >= 0:
            at = pos - len(tail) + i
            if gzipped or at == 0 or data[i - 1 : i] == b"\n":
                return at
            i = data.find(marker, i + 1)
        tail = data[-(len(marker) - 1) :]
        pos += len(block)


def read_warc(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """WARC (``.warc``, ``.warc.gz``, ``.warc.zst``; local or ``s3://``): one row per record, HTML
    pages as interleaved documents with their images from the same file."""
    yield from batched(iter(WarcRows(unit, cfg)), INTERLEAVED_DOC, cfg.rows_per_batch)
