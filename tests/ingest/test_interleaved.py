"""Interleaved readers: MMC4 jsonl, OBELICS-style Parquet and the Wikipedia ZIM."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from mm1data.ingest.interleaved import html_to_items
from tests.ingest.conftest import read_rows, reasons


def test_mmc4_without_image_folder_keeps_docs_and_rejects_every_image_item(shared_data):
    rows = read_rows(
        "interleaved", "mmc4", shared_data / "b-interleaved" / "mmc4_docs_no_face_shard_151_v3.partial.jsonl"
    )
    assert len(rows) == 107
    assert all(r["reject"] is None for r in rows)
    assert sum(len(r["item_rejects"]) for r in rows) == 417
    assert {x["reason"] for r in rows for x in r["item_rejects"]} == {"image_missing"}
    assert sum(len(r["items"]) for r in rows) == 2072  # every sentence survives as a text item


def test_mmc4_images_resolve_from_folder_in_matched_text_order(tmp_path, shared_data):
    jpg = next((shared_data / "a-coco-mini" / "val2017").glob("*.jpg")).read_bytes()
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(jpg)
    doc = {
        "url": "http://example.com",
        "text_list": ["First.", "Second.", "Third."],
        "image_info": [
            {"image_name": "a.jpg", "raw_url": "http://x/a.jpg", "matched_text_index": 1},
            {"image_name": "missing.jpg", "raw_url": "http://x/b.jpg", "matched_text_index": 2},
        ],
    }
    (tmp_path / "docs.jsonl").write_text(json.dumps(doc) + "\n" + "not json\n")
    rows = read_rows("interleaved", "mmc4", tmp_path / "docs.jsonl", images=str(tmp_path / "img"))
    assert reasons(rows) == {"docs:0": None, "docs:1": "invalid_json"}
    kinds = [(i["kind"], i["text"]) for i in rows[0]["items"]]
    assert kinds == [("text", "First."), ("image", None), ("text", "Second."), ("text", "Third.")]
    assert [r["reason"] for r in rows[0]["item_rejects"]] == ["image_missing"]


def test_obelics_parquet_maps_texts_and_images_with_nulls(tmp_path, shared_data):
    jpg = next((shared_data / "a-coco-mini" / "val2017").glob("*.jpg")).read_bytes()
    with_bytes = pa.table({"texts": [["Intro text.", None, "Closing text."]], "images": [[None, jpg, None]]})
    url_only = pa.table({"texts": [[None]], "images": [["http://only-a-url/img.jpg"]]})
    pq.write_table(with_bytes, tmp_path / "bytes.parquet")
    pq.write_table(url_only, tmp_path / "urls.parquet")
    (doc,) = read_rows("interleaved", "obelics", tmp_path / "bytes.parquet")
    assert [i["kind"] for i in doc["items"]] == ["text", "image", "text"]
    assert doc["items"][1]["position"] == 1
    (doc,) = read_rows("interleaved", "obelics", tmp_path / "urls.parquet")
    assert doc["reject"]["reason"] == "empty_document"
    assert doc["item_rejects"][0]["reason"] == "image_missing"


def test_zim_articles_become_docs_in_reading_order(shared_data):
    rows = read_rows(
        "interleaved", "zim", shared_data / "b-interleaved" / "wikipedia_en_ray_charles_2015-06.zim"
    )
    assert len(rows) == 85
    got = reasons(rows)
    assert [k for k, v in got.items() if v] == ["wikipedia_en_ray_charles_2015-06:A/index.htm"]
    assert got["wikipedia_en_ray_charles_2015-06:A/index.htm"] == "not_an_article"
    ray = next(r for r in rows if r["id"].endswith("A/Ray_Charles.html"))
    kinds = [i["kind"] for i in ray["items"]]
    assert kinds[0] == "text" and "image" in kinds
    assert ray["items"][0]["text"].startswith("Ray Charles")
    images = [i for r in rows if r["items"] for i in r["items"] if i["kind"] == "image"]
    assert len(images) > 100 and all(i["width"] > 0 for i in images)


def test_html_to_items_keeps_order_and_drops_scripts():
    html = "<p>One <b>two</b></p><script>var x;</script><img src='a.png'><p>Three</p>"
    assert html_to_items(html) == [("text", "One two"), ("image", "a.png"), ("text", "Three")]
