"""The download phase's pure pieces without Ray: readers leave URL-only images pending, the plan
reuses or refetches per URL whatever the row order, fills keep one result round per record."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

from mm1data.config import DownloadConfig, IngestConfig
from mm1data.download.fetch import url_hash
from mm1data.download.phase import (
    PLAN_IN,
    caption_refs,
    fill_docs,
    item_refs,
    latest_round,
    plan_urls,
    stored_results,
)
from mm1data.ingest import read_unit
from mm1data.ingest.base import Unit
from mm1data.schemas import INTERLEAVED_DOC

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
    refs = pa.concat_tables([item_refs(t) for t in read_unit(Unit("interleaved", "mmc4", str(mmc4)), ON)])
    assert refs.num_rows == 417


def test_plan_is_the_same_whatever_the_row_order():
    urls = [f"http://h/{i}.jpg" for i in range(6)]
    refs = caption_refs(
        pa.Table.from_pylist(
            [{"id": f"r{i}", "url": u, "image": None, "image_sha256": None, "reject": None} for i, u in
             enumerate(urls + urls[:2])]
        )
    )  # fmt: skip
    assert refs.num_rows == 8
    stored = stored_results(
        pa.Table.from_pylist(
            [
                {"url_hash": url_hash(urls[0]), "url": urls[0], "round": 0, "status": "ok", "reason": None,
                 "retryable": False},
                {"url_hash": url_hash(urls[1]), "url": urls[1], "round": 0, "status": "failed",
                 "reason": "timeout", "retryable": True},
                {"url_hash": url_hash(urls[2]), "url": urls[2], "round": 0, "status": "failed",
                 "reason": "http_404", "retryable": False},
                {"url_hash": url_hash(urls[1]), "url": urls[1], "round": 1, "status": "failed",
                 "reason": "http_5xx", "retryable": True},
                {"url_hash": url_hash("http://gone/"), "url": "http://gone/", "round": 0, "status": "ok"},
            ]
        )
    )  # fmt: skip
    block = pa.concat_tables([refs, stored]).cast(PLAN_IN)
    for retry in (False, True):
        plans = []
        for seed in range(3):
            order = list(range(block.num_rows))
            random.Random(seed).shuffle(order)
            plans.append(plan_urls(block.take(order), retry).to_pylist())
        assert plans[0] == plans[1] == plans[2]
        by_url = {p["url"]: p for p in plans[0]}
        assert set(by_url) == set(urls)  # one row per referenced URL, the unreferenced result dropped
        assert [by_url[u]["todo"] for u in urls] == [False, retry, False, True, True, True]
        assert by_url[urls[1]]["round"] == (2 if retry else 1)


def test_fills_keep_the_latest_round_and_docs_lose_failed_items():
    joined = pa.table({"row_key": ["a", "a", "b"], "r_round": [0, 1, None], "v": [1, 2, 3]})
    assert latest_round(joined, "row_key").to_pydict() == {
        "row_key": ["a", "b"],
        "r_round": [1, None],
        "v": [2, 3],
    }
    doc = {
        "id": "d",
        "items": [
            {"kind": "text", "text": "hello there", "position": 0},
            {"kind": "image", "url": "http://h/1.jpg", "position": 1},
            {"kind": "image", "url": "http://h/2.jpg", "position": 2},
        ],
        "lineage": {"source": "s", "offset": 0},
        "item_rejects": [],
        "fills": [
            {"item_index": 1, "status": "ok", "image": b"x", "image_sha256": "f" * 64, "width": 9,
             "height": 9, "format": "jpeg"},
            {"item_index": 2, "status": "failed", "reason": "http_404", "detail": "HTTP 404"},
        ],
    }  # fmt: skip
    fill = pa.struct(
        [("item_index", pa.int32()), ("status", pa.string()), ("reason", pa.string()),
         ("detail", pa.string()), ("image", pa.binary()), ("image_sha256", pa.string()),
         ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string())]
    )  # fmt: skip
    table = pa.Table.from_pylist([doc], schema=INTERLEAVED_DOC.append(pa.field("fills", pa.list_(fill))))
    (out,) = fill_docs(table).to_pylist()
    assert [it["kind"] for it in out["items"]] == ["text", "image"] and out["items"][1]["width"] == 9
    assert [r["reason"] for r in out["item_rejects"]] == ["http_404"] and out["reject"] is None


def test_resize_for_download_shards_center_crops_and_rejects_what_fails(shared_data):
    import io

    from PIL import Image

    from mm1data.download.job import resize_batch
    from mm1data.schemas import CAPTION_PAIR

    jpg = next((shared_data / "a-coco-mini" / "val2017").glob("*.jpg")).read_bytes()
    table = pa.Table.from_pylist(
        [{"id": "a", "image": jpg, "format": "jpeg", "width": 640},
         {"id": "b", "image": b"not an image", "format": "png"},
         {"id": "c", "image": None, "reject": {"stage": "download", "reason": "http_404"}}],
        schema=CAPTION_PAIR,
    )  # fmt: skip
    out = resize_batch(table, 64, 90).to_pylist()
    assert Image.open(io.BytesIO(out[0]["image"])).size == (64, 64) and out[0]["width"] == 640
    assert [(r["reject"] or {}).get("reason") for r in out] == [None, "image_undecodable", "http_404"]
