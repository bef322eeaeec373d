"""OBELICS paragraph and document rules on real web pages (the dolma, pywb and resiliparse WARCs),
the interleaved image rules (2:1, rendered size) and the interleaved chain."""

from __future__ import annotations

import pyarrow as pa
import pytest
from fastwarc.warc import ArchiveIterator

from mm1data.config import (
    FilterConfig,
    ImageConfig,
    IngestConfig,
    InterleavedConfig,
    ParagraphConfig,
    WebDocumentConfig,
)
from mm1data.filters import filter_stages
from mm1data.filters.image import InterleavedDocFilter, InterleavedImageFilter, check_image
from mm1data.filters.language import LanguageFilter
from mm1data.filters.obelics import (
    ParagraphFilter,
    WebDocumentFilter,
    char_repetition_ratio,
    obelics_words,
    punctuation_ratio,
    text_verdict,
    word_repetition_ratio,
)
from mm1data.ingest import read_unit
from mm1data.ingest.base import Unit
from mm1data.schemas import INTERLEAVED_DOC

WARCS = {
    "sample-0000": "b-interleaved/sample-0000.warc.gz",
    "sample-0001": "b-interleaved/sample-0001.warc.gz",
    "pywb-iana": "b-interleaved/warc/pywb-iana.warc.gz",
    "resiliparse-warcfile": "b-interleaved/warc/resiliparse-warcfile.warc.gz",
}


@pytest.fixture(scope="module")
def web_docs(shared_data) -> dict[str, dict]:
    """Every document the WARC reader makes of the four real crawls, by id."""
    out = {}
    for path in WARCS.values():
        for t in read_unit(Unit("interleaved", "warc", str(shared_data / path)), IngestConfig()):
            out.update({r["id"]: r for r in t.to_pylist() if r["reject"] is None})
    return out


def paragraph(docs: dict[str, dict], doc_id: str, start: str) -> str:
    """The first paragraph of a document's text items that starts with ``start``."""
    paragraphs = [p for i in docs[doc_id]["items"] if i["kind"] == "text" for p in i["text"].split("\n\n")]
    return next(p for p in paragraphs if p.startswith(start))


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=INTERLEAVED_DOC)


def test_measures_match_obelicss_definitions():
    assert obelics_words("Hello, World! 2024 (c) naïve--") == ["hello", "world", "c", "naïve"]
    assert char_repetition_ratio("abcabcabcabc", 3) == pytest.approx(4 / 10)  # top ⌊√3⌋=1 of 3 n-grams
    assert word_repetition_ratio("a b a b a b".split(), 2) == 1.0
    assert word_repetition_ratio("a b c d".split(), 2) == 0.0
    assert punctuation_ratio("one two, three.") == pytest.approx(2 / 5)
    assert punctuation_ratio("one two three", min_tokens=12) == 1.0  # too short to judge


@pytest.mark.parametrize(
    ("doc_id", "start", "reason"),
    [
        ("sample-0000:865", "Meet Our Team", "too_few_words"),
        ("sample-0000:865", "Semantic Scholar Research Team", "few_stop_words"),
        ("pywb-iana:715878", "Table Type Version Date Registry", "too_many_words"),  # 1,850 words
        ("sample-0000:148743", "Research Statement, Teaching Statement", "char_repetition"),
        ("resiliparse-warcfile:32353", "5万以下", "word_repetition"),  # a salary-range menu
        ("resiliparse-warcfile:110823", "生管文员", "special_characters"),  # a job-listing row
        ("sample-0000:153760", "So happy new year", "little_punctuation"),  # 13 words, no full stop
        ("sample-0000:82240", "Moving from Paperpile to Zotero", None),
        ("sample-0001:12746", "Creative Commons (CC) is an international", None),
    ],
)
def test_each_paragraph_rule_on_a_real_paragraph(web_docs, doc_id, start, reason):
    verdict = text_verdict(paragraph(web_docs, doc_id, start), ParagraphConfig())
    assert (verdict and verdict[0]) == reason


def test_paragraph_filter_removes_paragraphs_not_the_doc(web_docs):
    doc = web_docs["sample-0001:12746"]  # https://creativecommons.org/mission/
    out = ParagraphFilter()(table([doc])).to_pylist()[0]
    assert out["reject"] is None
    texts = [i["text"] for i in out["items"] if i["kind"] == "text"]
    assert [i["position"] for i in out["items"]] == [2, 4, 6]  # "Skip to content" is gone
    assert texts[0].startswith("Creative Commons (CC) is an international nonprofit organization")
    assert "\n\nOur mission\n\n" not in texts[0]  # a two-word heading
    paragraph_rejects = [x for x in out["item_rejects"] if x["stage"] == "paragraph"]
    assert [(x["reason"], x["detail"].split(", first")[0]) for x in paragraph_rejects] == [
        ("paragraph_too_few_words", "position 0: 1 paragraph(s)"),  # Skip to content
        ("paragraph_too_few_words", "position 2: 3 paragraph(s)"),  # Our mission, Our vision, Our strategy
        (
            "paragraph_special_characters",
            "position 4: 1 paragraph(s)",
        ),  # Download CC’s full 2021–2025 strategy.
        ("paragraph_too_few_words", "position 4: 4 paragraph(s)"),
        ("paragraph_special_characters", "position 6: 1 paragraph(s)"),
        ("paragraph_too_few_words", "position 6: 3 paragraph(s)"),
    ]
    original = sum(len(i["text"].split("\n\n")) for i in doc["items"] if i["kind"] == "text")
    removed = sum(int(x["detail"].split(": ")[1].split(" ")[0]) for x in paragraph_rejects)
    assert sum(len(t.split("\n\n")) for t in texts) + removed == original  # every paragraph accounted


@pytest.mark.parametrize(
    ("doc_id", "reason"),
    [
        ("sample-0001:856", "char_repetition"),  # https://creativecommons.org/
        ("sample-0001:132646", "word_repetition"),  # https://allenai.org/reviz
        ("sample-0000:865", "few_stop_words"),  # Semantic Scholar's team page: a list of names
        ("pywb-iana:582987", "word_repetition"),  # IETF statistics tables
        ("sample-0001:12746", None),
        ("sample-0000:24881", None),  # https://soldaini.net/
    ],
)
def test_each_document_rule_on_a_real_page_after_its_paragraphs(web_docs, doc_id, reason):
    out = WebDocumentFilter()(ParagraphFilter()(table([web_docs[doc_id]]))).to_pylist()[0]
    assert (out["reject"] or {}).get("reason") == reason
    if reason:
        assert out["reject"]["stage"] == "web_document" and out["items"] is None


def test_document_special_characters_and_punctuation_rules(web_docs):
    listing = table([web_docs["resiliparse-warcfile:940"]])  # a Chinese listing, all numbers and tags
    assert WebDocumentFilter()(listing).to_pylist()[0]["reject"]["reason"] == "special_characters"
    only_punct = WebDocumentConfig(
        max_char_repetition=None, max_word_repetition=None, max_special_chars=None, min_stop_words=None
    )
    # a Chinese video-listing page: its 。 and ， are not among OBELICS's six punctuation marks
    out = WebDocumentFilter(only_punct)(table([web_docs["resiliparse-warcfile:61090"]])).to_pylist()[0]
    assert out["reject"]["reason"] == "little_punctuation" and out["reject"]["score"] < 0.03


@pytest.fixture(scope="module")
def iana_png(shared_data) -> bytes:
    with open(shared_data / WARCS["pywb-iana"], "rb") as f:
        return next(r.reader.read() for r in ArchiveIterator(f) if r.http_content_type == "image/png")


def test_aspect_ratio_is_2_in_web_documents_and_3_for_caption_pairs(iana_png):
    """OBELICS's config says aspect_ratio_max_cutoff: 2; DataComp's basic filter says 3."""
    assert check_image(iana_png, ImageConfig()) is None  # the IANA logo, 450x175 (2.57:1)
    items = [
        {"kind": "text", "text": "The IANA logo.", "position": 0},
        {"kind": "image", "image": iana_png, "url": "http://www.iana.org/logo.png", "position": 1},
    ]
    row = {"id": "d", "items": items, "lineage": {"source": "t", "offset": 0}, "item_rejects": []}
    out = InterleavedImageFilter(ImageConfig(), InterleavedConfig())(table([row])).to_pylist()[0]
    assert [x["reason"] for x in out["item_rejects"]] == ["image_aspect_ratio_too_high"]
    assert out["item_rejects"][0]["score"] == pytest.approx(450 / 175)


def test_rendered_size_from_the_img_tag_is_checked(web_docs, shared_data):
    coco = sorted((shared_data / "a-coco-mini" / "val2017").glob("*.jpg"))[0].read_bytes()
    items = [
        {"kind": "image", "image": coco, "url": "http://a/x.jpg", "position": 0, "rendered_width": 300},
        {"kind": "image", "image": coco, "url": "http://a/y.jpg", "position": 1, "rendered_height": 32},
        {"kind": "image", "image": coco, "url": "http://a/z.jpg", "position": 2, "rendered_width": 30_000},
    ]
    row = {"id": "d", "items": items, "lineage": {"source": "t", "offset": 0}, "item_rejects": []}
    out = InterleavedImageFilter(ImageConfig(), InterleavedConfig())(table([row])).to_pylist()[0]
    assert [i["position"] for i in out["items"]] == [0]
    assert [x["reason"] for x in out["item_rejects"]] == [
        "image_rendered_too_small",
        "image_rendered_too_large",
    ]


def test_doc_word_bounds_count_words_as_obelics(web_docs, shared_data):
    coco = sorted((shared_data / "a-coco-mini" / "val2017").glob("*.jpg"))[0].read_bytes()
    image = {"kind": "image", "image": coco, "url": "http://a/x.jpg", "position": 0}
    table_text = paragraph(web_docs, "pywb-iana:715878", "Table Type Version Date Registry")
    long_text = table_text + "\n\n" + table_text
    rows = [
        {"id": "long", "items": [image, {"kind": "text", "text": long_text, "position": 1}]},
        {
            "id": "short",
            "items": [image, {"kind": "text", "text": "2024 — 12:00 / © ® 1 2 3 4 5 6 7 8 9", "position": 1}],
        },
    ]
    rows = [{**r, "lineage": {"source": "t", "offset": 0}, "item_rejects": []} for r in rows]
    out = InterleavedDocFilter(InterleavedConfig())(table(rows)).to_pylist()
    assert [(r["reject"]["reason"], r["reject"]["score"]) for r in out] == [
        ("too_much_text", 3700.0),
        ("too_little_text", 0.0),
    ]


def test_interleaved_chain_order_and_language_threshold():
    names = [s.name for s in filter_stages(FilterConfig(), "interleaved")]
    assert names[:5] == ["image", "image_url_repeats", "paragraph", "interleaved_doc", "web_document"]
    (lid,) = [s for s in filter_stages(FilterConfig(), "interleaved") if isinstance(s, LanguageFilter)]
    assert lid.cfg.min_score == 0.8  # OBELICS lang_id_doc_level_min_cutoff; text docs keep 0.65
    (text_lid,) = [s for s in filter_stages(FilterConfig(), "text") if isinstance(s, LanguageFilter)]
    assert text_lid.cfg.min_score == 0.65
    off = FilterConfig(
        paragraph=ParagraphConfig(enabled=False), web_document=WebDocumentConfig(enabled=False)
    )
    assert "paragraph" not in [s.name for s in filter_stages(off, "interleaved")]
