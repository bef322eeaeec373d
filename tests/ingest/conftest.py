"""Helpers for reader tests: run a reader on one unit and collect its rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm1data.config import IngestConfig
from mm1data.ingest import read_unit
from mm1data.ingest.base import Unit

BAD = Path(__file__).resolve().parent.parent / "data" / "bad"


def read_rows(
    stream: str, fmt: str, path: Path | str, images: str | None = None, name: str | None = None
) -> list[dict]:
    """All rows a reader yields for one file, as dicts."""
    unit = Unit(stream=stream, format=fmt, path=str(path), images=images, name=name)
    return [row for table in read_unit(unit, IngestConfig()) for row in table.to_pylist()]


def reasons(rows: list[dict]) -> dict[str, str | None]:
    """id -> reject reason (None when kept)."""
    return {r["id"]: (r["reject"] or {}).get("reason") for r in rows}


@pytest.fixture(scope="session")
def bad_dir() -> Path:
    """tests/data/bad: the hand-made bad-input corpus."""
    return BAD


def write_warc(path: Path, records: list[tuple], gzip: bool = True) -> Path:
    """Write a WARC with warcio: ``("response", url, content_type, body)``, ``("revisit", url,
    content_type, original_url)`` (identical-payload-digest, pointing at an earlier response) and
    ``("redirect", url, location)`` records, in order."""
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    digests: dict[str, str] = {}
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=gzip)
        for kind, url, *rest in records:
            if kind == "response":
                ctype, body = rest
                headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
                record = writer.create_warc_record(
                    url, "response", payload=io.BytesIO(body), http_headers=headers
                )
                digests[url] = record.rec_headers.get_header("WARC-Payload-Digest")
            elif kind == "revisit":
                ctype, original = rest
                headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
                record = writer.create_revisit_record(
                    url, digests[original], original, "2024-01-01T00:00:00Z", http_headers=headers
                )
            else:
                (location,) = rest
                headers = StatusAndHeaders("302 Found", [("Location", location)], protocol="HTTP/1.1")
                record = writer.create_warc_record(
                    url, "response", payload=io.BytesIO(b""), http_headers=headers
                )
            writer.write_record(record)
    return path


def page_record(warc: Path, offset: int) -> tuple[str, bytes, str]:
    """(target URI, decoded HTML payload, Content-Type) of the record at ``offset`` of a WARC."""
    from fastwarc.warc import ArchiveIterator

    from mm1data.ingest.warc import decode_content, target_uri

    with open(warc, "rb") as f:
        for r in ArchiveIterator(f, quirks_mode=True):
            if r.stream_pos == offset:
                body = decode_content(r.reader.read(), r.http_headers, 1 << 30)
                return target_uri(r), body, r.http_headers.get("Content-Type")
    raise KeyError(offset)


def coco_jpegs(shared: Path, n: int) -> list[bytes]:
    """The first ``n`` COCO val2017 JPEGs (real photographs, about 640x480)."""
    return [p.read_bytes() for p in sorted((shared / "a-coco-mini" / "val2017").glob("*.jpg"))[:n]]


CC_MISSION = ("b-interleaved/sample-0001.warc.gz", 12746)
"""https://creativecommons.org/mission/ in the dolma sample WARC: three content images."""


def mission_warc(shared: Path, path: Path) -> Path:
    """The Creative Commons mission page from the dolma sample WARC with its three images stored
    in the same WARC (real COCO JPEGs standing in for the originals, which the sample lacks): the
    first as a response, the second as a revisit of the first's bytes under its own URL, the third
    behind a 302 redirect."""
    url, html, ctype = page_record(shared / CC_MISSION[0], CC_MISSION[1])
    a, b = coco_jpegs(shared, 2)
    up = "https://creativecommons.org/wp-content/uploads"
    return write_warc(
        path,
        [
            ("response", url, ctype, html),
            ("response", f"{up}/2020/06/cc.xlarge-300x300.png", "image/jpeg", a),
            (
                "revisit",
                f"{up}/2023/09/wispies_by_fictargraphics_d92tl3a-fullview.jpg",
                "image/jpeg",
                f"{up}/2020/06/cc.xlarge-300x300.png",
            ),
            (
                "redirect",
                f"{up}/2023/09/CCValues2021-2025-300x297.png",
                "http://media.example.org/values.jpg",
            ),
            ("response", "http://media.example.org/values.jpg", "image/jpeg", b),
        ],
    )
