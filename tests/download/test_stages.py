"""The download phase's pure pieces without Ray: readers leave URL-only images pending, the plan
reuses or refetches per URL whatever the row order, fills take the latest result per URL and check
each record's expected digest, docs lose failed items, the render comes from the one decode."""

from __future__ import annotations

import hashlib
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

from mm1data.config import DownloadConfig, IngestConfig
from mm1data.download.phase import (
    DOCS,
    FILL_RESULT,
    ITEM_FILL,
    PAIRS,
    REF,
    STORED,
    fill_docs,
    fill_pairs,
    item_refs,
    pair_refs,
    pending_docs,
    pending_pairs,
    plan_urls,
    url_keys,
)
from mm1data.ingest import read_unit
from mm1data.ingest.base import Render, Unit, describe_image
from mm1data.schemas import CAPTION_PAIR

ON = IngestConfig(download=DownloadConfig(enabled=True, hash_col="sha256"))


def rows(fmt: str, path, cfg: IngestConfig, stream: str = "caption") -> list[dict]:
    return [r for t in read_unit(Unit(stream, fmt, str(path)), cfg) for r in t.to_pylist()]


def test_caption_tables_leave_url_rows_pending_only_when_download_is_on(tmp_path, shared_data):
    laion = shared_data / "a-img2dataset-captions" / "test_10000.parquet"
    off = rows("parquet", laion, IngestConfig())
    on = rows("parquet", laion, IngestConfig(download=DownloadConfig(enabled=True)))
    assert {r["reject"]["reason"] for r in off} == {"no_image_bytes"}
    pending = [r for r in on if r["reject"] is None]
    assert len(pending) == 9_999 and all(r["image"] is None and r["url"].startswith("http") for r in pending)
    assert [r["reject"]["reason"] for r in on if r["reject"]] == ["no_image_bytes"]  # the "UNLIKELY" URL
    assert [r["id"] for r in on] == [r["id"] for r in off]

    # DataComp-style JSON lines and TSV with url/text, a sha256 column, and bad lines
    lines = [
        json.dumps({"url": "http://h/a.jpg", "text": "a cat on a mat", "sha256": "AB" * 32}),
        "{not json",
        json.dumps({"url": "http://h/b.jpg", "text": ""}),
        "",
    ]
    (tmp_path / "dc.jsonl").write_text("\n".join(lines) + "\n")
    got = rows("jsonl", tmp_path / "dc.jsonl", ON)
    assert [(r["reject"] or {}).get("reason") for r in got] == [
        None,
        "invalid_json",
        "no_caption",
        "empty_line",
    ]
    assert (
        got[0]["image_sha256"] == "sha256:" + "ab" * 32 and got[0]["captions"][0]["text"] == "a cat on a mat"
    )
    (tmp_path / "cc.tsv").write_text("caption\turl\na dog\thttp://h/d.jpg\n12\tftp://h/e.jpg\n")
    got = rows("tsv", tmp_path / "cc.tsv", ON)
    assert [(r["reject"] or {}).get("reason") for r in got] == [None, "no_image_bytes"]
    cols = pa.table({"URL": ["http://h/x.png"], "TEXT": ["x marks the spot"]})
    pq.write_table(cols, tmp_path / "laion.parquet")
    custom = IngestConfig(download=DownloadConfig(enabled=True, url_col="URL", caption_col="TEXT"))
    assert rows("parquet", tmp_path / "laion.parquet", custom)[0]["url"] == "http://h/x.png"


def test_mmc4_raw_urls_become_pending_items(shared_data):
    mmc4 = shared_data / "b-interleaved" / "mmc4_docs_no_face_shard_151_v3.partial.jsonl"
    off = rows("mmc4", mmc4, IngestConfig(), "interleaved")
    on = rows("mmc4", mmc4, ON, "interleaved")
    assert sum(len(r["item_rejects"] or []) for r in off) == 417  # every image: image_missing
    items = [it for r in on for it in r["items"] or [] if it["kind"] == "image"]
    assert len(items) == 417 and all(it["image"] is None and it["url"] for it in items)
    refs = pa.concat_tables(
        [item_refs(pending_docs(t)) for t in read_unit(Unit("interleaved", "mmc4", str(mmc4)), ON)]
    )
    assert refs.num_rows == 417


def test_obelics_image_urls_become_pending_items(tmp_path):
    texts = [["A page about cats.", None, "More text."], ["Only text here."]]
    images = [[None, "https://h/cat.jpg", None], [None]]
    pq.write_table(pa.table({"id": ["a", "b"], "texts": texts, "images": images}), tmp_path / "o.parquet")
    off = rows("obelics", tmp_path / "o.parquet", IngestConfig(), "interleaved")
    on = rows("obelics", tmp_path / "o.parquet", ON, "interleaved")
    assert [r["reason"] for r in off[0]["item_rejects"]] == ["image_missing"]
    (item,) = [it for it in on[0]["items"] if it["kind"] == "image"]
    assert item["url"] == "https://h/cat.jpg" and item["image"] is None and not on[0]["item_rejects"]
    docs = pending_docs(pa.Table.from_pylist(on, schema=DOCS.remove(DOCS.get_field_index("_row"))))
    assert docs.num_rows == 1 and item_refs(docs).column("url").to_pylist() == ["https://h/cat.jpg"]


def _stored(rows: list[dict]) -> pa.Table:
    for r in rows:
        r["k"] = url_keys(pa.array([r["url"]]))[0].as_py()
    return pa.Table.from_pylist(rows, schema=STORED)


def test_plan_is_the_same_whatever_the_row_order():
    urls = [f"http://h{i % 2}/{i}.jpg" for i in range(6)]
    pairs = pa.Table.from_pylist(
        [
            {"id": f"r{i}", "url": u, "lineage": {"source": "s", "offset": i}}
            for i, u in enumerate(urls + urls[:2])
        ],
        schema=CAPTION_PAIR,
    )
    refs = pair_refs(pairs)
    assert refs.num_rows == 8 and refs.schema == REF
    stored = _stored(
        [
            {"url": urls[0], "round": 0, "status": "ok", "retryable": False},
            {"url": urls[1], "round": 0, "status": "failed", "reason": "timeout", "retryable": True},
            {"url": urls[2], "round": 0, "status": "failed", "reason": "http_404", "retryable": False},
            {"url": urls[1], "round": 1, "status": "failed", "reason": "http_5xx", "retryable": True},
            {"url": "http://gone/", "round": 0, "status": "ok"},
        ]
    )
    for retry in (False, True):
        plans = []
        for seed in range(3):
            rng = random.Random(seed)
            parts = {}
            for name, t in (("refs", refs), ("stored", stored)):
                order = list(range(t.num_rows))
                rng.shuffle(order)
                parts[name] = t.take(order)
            plans.append(plan_urls(parts, retry, False).to_pylist())
        assert plans[0] == plans[1] == plans[2]
        by_url = {p["url"]: p for p in plans[0]}
        assert set(by_url) == set(urls)  # one row per referenced URL, the unreferenced result dropped
        assert [by_url[u]["todo"] for u in urls] == [False, retry, False, True, True, True]
        assert by_url[urls[1]]["round"] == (2 if retry else 1)
        assert by_url[urls[0]]["sources"] == [{"source": "s", "refs": 2}]
        assert [p["url"].split("/")[2] for p in plans[0]] == ["h0"] * 3 + ["h1"] * 3  # by host


def test_fills_take_the_latest_result_and_check_each_records_digest():
    body = b"\xff\xd8 pretend jpeg"
    sha, md5 = hashlib.sha256(body).hexdigest(), hashlib.md5(body).hexdigest()
    url, gone = "http://h/a.jpg", "http://h/gone.jpg"
    expected = [None, f"sha256:{sha}", f"md5:{md5}", "sha256:" + "0" * 64, None]
    pairs = pa.Table.from_pylist(
        [
            {
                "id": f"r{i}",
                "url": url if i < 4 else gone,
                "image_sha256": e,
                "lineage": {"source": "s", "offset": i},
                "captions": [{"text": "a cat", "provenance": "alt"}],
            }
            for i, e in enumerate(expected)
        ],
        schema=CAPTION_PAIR,
    )
    pairs = pending_pairs(pairs)
    assert pairs.schema == PAIRS
    results = pa.Table.from_pylist(
        [
            {"url": url, "round": 0, "status": "failed", "reason": "timeout"},
            {
                "url": url,
                "round": 1,
                "status": "ok",
                "md5": md5,
                "image": body,
                "image_sha256": sha,
                "width": 4,
                "height": 3,
                "format": "jpeg",
            },
            {"url": gone, "round": 0, "status": "failed", "reason": "http_404", "detail": "HTTP 404"},
        ],
        schema=FILL_RESULT,
    )
    results = results.set_column(0, "k", url_keys(results.column("url")))
    out = fill_pairs({"pairs": pairs.take([4, 3, 2, 1, 0]), "results": results}).to_pylist()
    assert [r["id"] for r in out] == ["r0", "r1", "r2", "r3", "r4"]  # the same order whatever came in
    assert [(r["reject"] or {}).get("reason") for r in out] == [None, None, None, "hash_mismatch", "http_404"]
    assert all(r["image"] == body and r["width"] == 4 and r["image_sha256"] == sha for r in out[:3])
    assert out[3]["image"] is None and out[3]["reject"]["stage"] == "download"


def test_docs_lose_failed_items_and_a_doc_with_none_left_is_rejected():
    doc = {
        "id": "d",
        "items": [
            {"kind": "text", "text": "hello there", "position": 0},
            {"kind": "image", "url": "http://h/1.jpg", "position": 1},
            {"kind": "image", "url": "http://h/2.jpg", "position": 2},
        ],
        "lineage": {"source": "s", "offset": 0},
        "item_rejects": [],
    }
    only = {
        "id": "e",
        "items": [{"kind": "image", "url": "http://h/2.jpg", "position": 0}],
        "lineage": {"source": "s", "offset": 1},
        "item_rejects": [],
    }
    docs = pending_docs(pa.Table.from_pylist([doc, only], schema=DOCS.remove(DOCS.get_field_index("_row"))))
    refs = item_refs(docs).to_pylist()
    assert [(r["item"], r["url"]) for r in refs] == [
        (1, "http://h/1.jpg"),
        (2, "http://h/2.jpg"),
        (0, "http://h/2.jpg"),
    ]
    rows = docs.column("_row").to_pylist()
    fills = pa.Table.from_pylist(
        [
            {
                "_row": rows[0],
                "item": 1,
                "ok": True,
                "image": b"x",
                "image_sha256": "f" * 64,
                "width": 9,
                "height": 9,
                "format": "jpeg",
            },
            {
                "_row": rows[0],
                "item": 2,
                "ok": False,
                "reason": "http_404",
                "detail": "http://h/2.jpg: HTTP 404",
            },
            {
                "_row": rows[1],
                "item": 0,
                "ok": False,
                "reason": "http_404",
                "detail": "http://h/2.jpg: HTTP 404",
            },
        ],
        schema=ITEM_FILL,
    )
    out = fill_docs({"docs": docs.take([1, 0]), "fills": fills}).to_pylist()
    assert [d["id"] for d in out] == ["d", "e"]
    assert [it["kind"] for it in out[0]["items"]] == ["text", "image"] and out[0]["items"][1]["width"] == 9
    assert [r["reason"] for r in out[0]["item_rejects"]] == ["http_404"] and out[0]["reject"] is None
    assert out[1]["reject"]["reason"] == "empty_document" and out[1]["items"] is None


def test_render_is_a_center_crop_from_the_one_decode(shared_data):
    from PIL import Image

    from mm1data.config import IngestConfig as Limits

    jpg = next((shared_data / "a-coco-mini" / "val2017").glob("*.jpg")).read_bytes()
    plain = describe_image(jpg, Limits())
    info = describe_image(jpg, Limits(), Render(64, 90))
    assert Image.open(io.BytesIO(info.rendered)).size == (64, 64)
    assert (info.width, info.height, info.sha256) == (plain.width, plain.height, plain.sha256)
    assert bin(info.phash ^ plain.phash).count("1") <= 8  # the same picture to the perceptual hash
