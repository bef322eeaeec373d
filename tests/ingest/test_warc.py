"""The WARC reader on real crawls: one row per record (read = kept + rejected), documents in
reading order, images from the same WARC, and every kind of damage as a specific reject."""

from __future__ import annotations

import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType
from selectolax.lexbor import LexborHTMLParser

from mm1data.config import IngestConfig, SourceSpec
from mm1data.ingest import detect_format, plan, read_unit
from mm1data.ingest.base import Unit
from mm1data.ingest.html import page_base, resolve
from mm1data.ingest.warc import ImageIndex, decode_html, url_key
from tests.ingest.conftest import coco_jpegs, mission_warc, page_record, write_warc

B = "b-interleaved"
GZIP_MAGIC = b"\x1f\x8b"


def rows_of(path: Path | str, cfg: IngestConfig | None = None, fmt: str = "warc") -> list[dict]:
    unit = Unit(stream="interleaved", format=fmt, path=str(path))
    return [r for t in read_unit(unit, cfg or IngestConfig()) for r in t.to_pylist()]


def outcome(rows: list[dict]) -> Counter:
    """Rows by reject reason ("kept" for documents)."""
    return Counter((r["reject"] or {}).get("reason", "kept") for r in rows)


def items_by_kind(rows: list[dict]) -> Counter:
    return Counter(i["kind"] for r in rows for i in r["items"] or [])


def item_rejects(rows: list[dict]) -> Counter:
    return Counter(x["reason"] for r in rows for x in r["item_rejects"] or [])


def n_records(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in ArchiveIterator(f, parse_http=False))


def test_warc_files_are_detected_and_planned(shared_data):
    assert detect_format("interleaved", "s3://b/crawl/CC-MAIN-1.warc.gz") == "warc"
    assert detect_format("interleaved", "x.warc") == "warc"
    units = plan("interleaved", SourceSpec(path=str(shared_data / B / "warc")))
    names = [Path(u.path).name for u in units]
    assert len(names) == 11 and "pywb-iana.warc.gz" in names and "example-trunc.warc" in names
    assert "example-bad.warc.gz.bad" not in names  # no WARC extension: only with warc:PATH
    (bad,) = plan(
        "interleaved",
        SourceSpec(path=str(shared_data / B / "warc/warcio-bad/example-bad.warc.gz.bad"), format="warc"),
    )
    assert bad.format == "warc"


def test_pywb_every_record_is_one_row_and_every_html_page_a_doc(shared_data):
    path = shared_data / B / "warc" / "pywb-iana.warc.gz"
    rows = rows_of(path)
    assert len(rows) == n_records(path) == 343  # read = kept + rejected, per WARC record
    assert len({r["id"] for r in rows}) == 343
    assert outcome(rows) == {"kept": 16, "http_redirect": 4, "not_html": 151, "not_a_response": 172}
    # 20 HTML responses: 16 pages and 4 redirect stubs; 151 = 27 non-HTML responses + 124 revisits
    docs = [r for r in rows if r["reject"] is None]
    assert all(d["url"].startswith(("http://www.iana.org/", "https://www.iana.org/")) for d in docs)
    assert items_by_kind(rows) == {"text": 17}
    # the one content image (header and footer logos are boilerplate) was found in the WARC: it
    # is an SVG, which Pillow cannot decode (OBELICS keeps jpg/png/webp only)
    assert item_rejects(rows) == {"image_undecodable": 1}
    (numbers,) = [d for d in docs if d["url"] == "http://www.iana.org/numbers"]
    assert numbers["id"] == "pywb-iana:321385" and numbers["lineage"]["offset"] == 321385
    assert [i["position"] for i in numbers["items"]] == [0, 2]
    assert "rir-map.svg" in numbers["item_rejects"][0]["detail"]
    assert (
        '"warc_record_id": "<urn:uuid:' in numbers["metadata"] and '"http_status": 200' in numbers["metadata"]
    )


def test_pywb_all_32_img_resolve_to_image_records_in_the_same_warc(shared_data):
    path = shared_data / B / "warc" / "pywb-iana.warc.gz"
    with open(path, "rb") as f:
        index = ImageIndex.build(f)
    urls = []
    with open(path, "rb") as f:
        for r in ArchiveIterator(f, record_types=WarcRecordType.response):
            if r.http_content_type == "text/html" and r.http_headers.status_code == 200:
                tree = LexborHTMLParser(r.reader.read())
                base = page_base(tree, r.headers.get("WARC-Target-URI"))
                urls += [resolve(base, img.attributes["src"]) for img in tree.css("img")]
    assert len(urls) == 32
    found = [index.locate(u) for u in urls]
    assert all(found)
    # the https page's two images exist only as https revisits, followed to the http originals
    via_revisit = [u for u in urls if url_key(u) not in index.by_url]
    assert via_revisit == [
        "https://www.iana.org/_img/2013.1/iana-logo-header.svg",
        "https://www.iana.org/_img/2013.1/icann-logo.svg",
    ]
    assert index.locate(via_revisit[0]) == index.locate(
        "http://www.iana.org/_img/2013.1/iana-logo-header.svg"
    )


def test_images_come_from_the_warc_through_revisits_and_redirects(tmp_path, shared_data):
    rows = rows_of(mission_warc(shared_data, tmp_path / "mission.warc.gz"))
    assert outcome(rows) == {"kept": 1, "not_html": 4}
    (doc,) = [r for r in rows if r["reject"] is None]
    assert doc["item_rejects"] == []
    assert [(i["kind"], i["position"]) for i in doc["items"]] == [
        ("text", 0),
        ("image", 1),
        ("text", 2),
        ("image", 3),
        ("text", 4),
        ("image", 5),
        ("text", 6),
    ]
    a, b = coco_jpegs(shared_data, 2)
    images = [i for i in doc["items"] if i["kind"] == "image"]
    assert [i["image"] for i in images] == [a, a, b]  # response, revisit of it, 302 to another record
    assert images[1]["alt"].startswith("An abstract illustration of many radiating lines")
    assert (images[1]["rendered_width"], images[1]["rendered_height"]) == (300, 219)
    assert images[0]["format"] == "jpeg" and images[0]["width"] > 0
    assert doc["items"][2]["text"].startswith("Creative Commons (CC) is an international nonprofit")


def test_dolma_sample_warcs_exact_counts(shared_data):
    rows = rows_of(shared_data / B / "sample-0000.warc.gz") + rows_of(shared_data / B / "sample-0001.warc.gz")
    assert len(rows) == 48 + 34
    # 37 HTML pages: 36 docs and one whose whole content is a banner; wget log/metadata records
    assert outcome(rows) == {"kept": 36, "empty_document": 1, "not_a_response": 41, "not_html": 4}
    assert items_by_kind(rows) == {"text": 209}
    # 389 <img> elements (391 "<img" strings, 2 of them in comments/scripts): 73 in boilerplate
    # (nav, header, footer, hidden), 316 in content; no image record in these WARCs, so with the
    # download phase off each is `image_missing` (6 inline SVG data: URIs are undecodable)
    assert item_rejects(rows) == {"image_missing": 310, "image_undecodable": 6}


def test_resiliparse_warcs_exact_counts_and_charsets(shared_data):
    rows = rows_of(shared_data / B / "warc" / "resiliparse-warcfile.warc.gz")
    assert outcome(rows) == {"kept": 16, "not_a_response": 34}
    assert items_by_kind(rows) == {"text": 78}
    assert item_rejects(rows) == {"image_missing": 106, "image_no_src": 4}
    quirk = rows_of(shared_data / B / "warc" / "resiliparse-clueweb-quirk.warc.gz")
    assert outcome(quirk) == {"kept": 29, "not_a_response": 1}
    assert items_by_kind(quirk) == {"text": 933}
    assert item_rejects(quirk) == {"image_missing": 1252}
    # ClueWeb09 Japanese pages: EUC-JP from the (LF-only) HTTP header, decoded to real Japanese
    assert {d["metadata"].split('"charset": ')[1].split(",")[0] for d in quirk if d["reject"] is None} == {
        '"euc_jp"'
    }
    assert "ブランド" in "".join(i["text"] or "" for d in quirk for i in d["items"] or [])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resiliparse-clipped.warc.gz", {"warc_truncated": 1}),
        # one gzip member for the whole file: FastWARC reads it (warcio refuses)
        ("warcio-bad/example-bad-non-chunked.warc.gz", {"kept": 1, "html_revisit": 1, "not_a_response": 4}),
        (
            "warcio-bad/example-bad.warc.gz.bad",
            {"kept": 1, "html_revisit": 1, "http_redirect": 1, "not_a_response": 3},
        ),
        ("warcio-bad/example-resource.warc.gz", {"kept": 1, "not_a_response": 2}),
        ("warcio-bad/example-space-in-target-uri.warc.gz", {"not_html": 1, "not_a_response": 1}),
        # the response is shorter than its Content-Length: it swallows the next record's header
        ("warcio-bad/example-trunc.warc", {"warc_digest_mismatch": 1, "not_a_response": 3}),
        ("warcio-bad/example-wget-bad-target-uri.warc.gz", {"kept": 1, "not_html": 2, "not_a_response": 3}),
        ("warcio-bad/example-wrong-chunks.warc.gz", {"warc_digest_mismatch": 1, "not_a_response": 1}),
        ("warcio-bad/example.warc.gz", {"kept": 1, "html_revisit": 1, "not_a_response": 4}),
    ],
)
def test_damaged_warcs_give_specific_reasons_and_keep_every_record(shared_data, name, expected):
    path = shared_data / B / "warc" / name
    rows = rows_of(path)
    assert outcome(rows) == expected
    assert len({r["id"] for r in rows}) == len(rows) == sum(expected.values())


@pytest.mark.parametrize(
    ("flip", "bad_id", "lost"),
    [
        (
            60_000,
            "flipped:55631",
            "not_html",
        ),  # inside the PNG record's member (damage found between records)
        (324_385, "flipped:321385", "kept"),  # inside the /numbers page (damage found reading the page)
    ],
)
def test_a_corrupt_gzip_member_loses_only_its_record(tmp_path, shared_data, flip, bad_id, lost):
    data = bytearray((shared_data / B / "warc" / "pywb-iana.warc.gz").read_bytes())
    data[flip] ^= 0xFF
    path = tmp_path / "flipped.warc.gz"
    path.write_bytes(bytes(data))
    rows = rows_of(path)
    assert len(rows) == 343
    expected = Counter({"kept": 16, "http_redirect": 4, "not_html": 151, "not_a_response": 172})
    expected[lost] -= 1
    expected["warc_bad_gzip"] = 1
    assert outcome(rows) == expected
    (bad,) = [r for r in rows if (r["reject"] or {}).get("reason") == "warc_bad_gzip"]
    assert bad["id"] == bad_id and "skipped" in bad["reject"]["detail"]


def test_a_file_cut_short_ends_with_a_truncated_record(tmp_path, shared_data):
    path = tmp_path / "cut.warc.gz"
    path.write_bytes((shared_data / B / "warc" / "pywb-iana.warc.gz").read_bytes()[:500_000])
    rows = rows_of(path)
    assert outcome(rows) == {"kept": 3, "not_html": 28, "not_a_response": 32, "warc_truncated": 1}
    assert rows[-1]["id"] == "cut:496277" and rows[-1]["reject"]["detail"] == "18726 of 655705 payload bytes"


def test_gigantic_pages_are_rejected_page_too_large(shared_data):
    rows = rows_of(shared_data / B / "warc" / "pywb-iana.warc.gz", IngestConfig(max_html_bytes=20_000))
    assert outcome(rows)["page_too_large"] == 3 and outcome(rows)["kept"] == 13


def test_charset_from_header_then_meta_then_detection(shared_data):
    _, html, _ = page_record(shared_data / CC_PAGE[0], CC_PAGE[1])
    text = html.decode("utf-8")
    assert decode_html(html, "utf-8") == (text, "utf-8")
    cyrillic = (
        "<html><head><meta charset='windows-1251'></head><body><p>Привет, мир. Это тест.</p></body></html>"
    )
    assert decode_html(cyrillic.encode("cp1251"), None) == (cyrillic, "cp1251")
    assert decode_html(cyrillic.encode("cp1251"), "no-such-charset")[1] == "cp1251"  # unknown header label
    one_bad_byte = html[:5000] + b"\xff" + html[5000:]
    decoded, enc = decode_html(one_bad_byte, "utf-8")  # declared, 1 bad byte in 100k: replaced
    assert enc == "utf-8" and decoded.count("\ufffd") == 1
    undeclared = "<p>Grüße aus Köln, schöne Straße.</p>".encode("cp1252")
    assert decode_html(undeclared, None)[0] == "<p>Grüße aus Köln, schöne Straße.</p>"  # detected


def test_s3_warc_reads_like_the_local_file(s3_bucket, shared_data):
    from mm1data.io.fs import fsspec_fs

    local = shared_data / B / "warc" / "pywb-iana.warc.gz"
    fs, root = fsspec_fs(f"s3://{s3_bucket}/crawl")
    fs.put(str(local), f"{root}/pywb-iana.warc.gz")
    (unit,) = plan("interleaved", SourceSpec(path=f"s3://{s3_bucket}/crawl/"))
    assert unit.format == "warc" and unit.path.startswith("s3://")
    remote = [r for t in read_unit(unit, IngestConfig()) for r in t.to_pylist()]

    def key(r: dict) -> tuple:
        # (Pillow's message for an unidentified image holds a memory address, so details differ)
        return (
            r["id"],
            (r["reject"] or {}).get("reason"),
            r["items"],
            [x["reason"] for x in r["item_rejects"] or []],
        )

    assert [key(r) for r in remote] == [key(r) for r in rows_of(local)]
    assert remote[0]["lineage"]["source"] == f"s3://{s3_bucket}/crawl/pywb-iana.warc.gz"


def test_memory_does_not_grow_with_the_warc(tmp_path, shared_data):
    _, html, ctype = page_record(shared_data / CC_PAGE[0], CC_PAGE[1])

    def peak(n_pages: int) -> int:
        path = write_warc(
            tmp_path / f"{n_pages}.warc.gz",
            [("response", f"https://a.org/{k}", ctype, html) for k in range(n_pages)],
        )
        tracemalloc.start()
        n = sum(
            t.num_rows
            for t in read_unit(Unit("interleaved", "warc", str(path)), IngestConfig(rows_per_batch=8))
        )
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert n == n_pages
        return top

    small, large = peak(16), peak(96)
    assert large < 1.3 * small, (small, large)


CC_PAGE = ("b-interleaved/sample-0001.warc.gz", 12746)


def test_randomly_damaged_warcs_never_stop_the_reader(tmp_path, shared_data):
    """60 seeded mutations (flipped, deleted and inserted bytes) of real WARCs, gzipped and plain."""
    import gzip
    import random

    sources = [
        (shared_data / B / "warc/warcio-bad/example.warc.gz").read_bytes(),
        gzip.decompress((shared_data / B / "warc/resiliparse-warcfile.warc.gz").read_bytes())[:60_000],
        (shared_data / B / "sample-0001.warc.gz").read_bytes()[:60_000],
    ]
    rng = random.Random(12)
    for k in range(60):
        data = bytearray(sources[k % 3])
        for _ in range(rng.randint(1, 20)):
            i, op = rng.randrange(len(data)), rng.random()
            if op < 0.5:
                data[i] = rng.randrange(256)
            elif op < 0.75:
                del data[i : i + rng.randint(1, 200)]
            else:
                data[i:i] = rng.randbytes(rng.randint(1, 50))
        suffix = ".warc.gz" if data[:2] == GZIP_MAGIC else ".warc"
        path = tmp_path / f"m{k}{suffix}"
        path.write_bytes(bytes(data))
        rows = rows_of(path)
        assert len({r["id"] for r in rows}) == len(rows)
        assert all(r["reject"] is None or r["reject"]["reason"] for r in rows)
