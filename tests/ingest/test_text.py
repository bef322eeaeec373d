"""Text readers on the real Dolma and C4 samples and on bad lines."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from tests.ingest.conftest import read_rows, reasons


def test_dolma_jsonl_gz_reads_697_docs_and_rejects_the_empty_ones(shared_data):
    (path,) = (shared_data / "c-text").glob("dolma-*.jsonl.gz")
    rows = read_rows("text", "jsonl", path, name="dolma")
    assert len(rows) == 697
    rejected = [r for r in rows if r["reject"]]
    assert {r["reject"]["reason"] for r in rejected} == {"empty_text"}
    assert len(rejected) == 27  # the sample really holds 27 docs with empty text
    kept = next(r for r in rows if not r["reject"])
    assert kept["source"] == "test_gz" and kept["id"].startswith("dolma:")
    assert "created" in json.loads(kept["metadata"])


def test_c4_files_read_30_docs_with_urls(shared_data):
    rows = [
        r
        for p in sorted((shared_data / "c-text").glob("olmo-c4-sample.*.json.gz"))
        for r in read_rows("text", "jsonl", p, name="c4")
    ]
    assert len(rows) == 30
    assert all(r["reject"] is None and r["url"].startswith("http") for r in rows)


def test_bad_lines_get_specific_reasons(bad_dir):
    got = reasons(read_rows("text", "jsonl", bad_dir / "text.jsonl"))
    assert got == {
        "text:ok": None,
        "text:1": "invalid_utf8",
        "text:2": "invalid_json",
        "text:no_text": "missing_field",
        "text:empty": "empty_text",
        "text:huge": "text_too_long",
        "text:not_a_string": "invalid_field",
        "text:7": "invalid_json",
    }


def test_zstd_jsonl_and_parquet(tmp_path):
    import zstandard

    lines = b'{"id": "z1", "text": "compressed with zstandard"}\n'
    (tmp_path / "docs.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    assert reasons(read_rows("text", "jsonl", tmp_path / "docs.jsonl.zst")) == {"text:z1": None}
    pq.write_table(pa.table({"text": ["from parquet", ""]}), tmp_path / "docs.parquet")
    assert reasons(read_rows("text", "parquet", tmp_path / "docs.parquet")) == {
        "docs:0": None,
        "docs:1": "empty_text",
    }
