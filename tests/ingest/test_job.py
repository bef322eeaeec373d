"""`mm1data ingest` end to end on Ray Data: every shared source, exact counts, conservation."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.dataset as pads
from click.testing import CliRunner

from mm1data.cli import main


def test_ingest_of_all_shared_sources_gives_exact_counts(ray_local, shared_data, tmp_path):
    s = shared_data
    ann = s / "a-coco-mini" / "annotations"
    coco = s / "a-coco-mini" / "val2017" / "000000397133.jpg"
    import hashlib

    sha = hashlib.sha256(coco.read_bytes()).hexdigest()
    synthetic = tmp_path / "synthetic.jsonl"
    synthetic.write_text(
        json.dumps({"sha256": sha, "caption": "A kitchen seen by a model.", "generator": "capgen"})
        + "\n"
        + json.dumps({"sha256": "0" * 64, "caption": "Nobody has this image.", "generator": "capgen"})
        + "\n"
    )
    args = [
        "ingest", "--quiet", "--output", str(tmp_path / "out"),
        "--captions", f"{ann}/captions_train2017.json",
        "--captions", f"{ann}/captions_val2017.json",
        "--captions", str(s / "a-img2dataset-captions" / "test_10000.parquet"),
        "--interleaved", str(s / "b-interleaved" / "mmc4_docs_no_face_shard_151_v3.partial.jsonl"),
        "--interleaved", str(s / "b-interleaved" / "wikipedia_en_ray_charles_2015-06.zim"),
        "--text", str(s / "c-text" / "dolma-*.jsonl.gz"),
        "--text", str(s / "c-text" / "olmo-c4-sample.0*.json.gz"),
        "--synthetic-captions", str(synthetic),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    streams = stats["streams"]
    assert streams["caption"]["kept"] == 159
    assert streams["caption"]["rejected_by_reason"] == {"ingest/no_image_bytes": 10_000}
    assert streams["interleaved"]["kept"] == 107 + 84
    assert streams["interleaved"]["rejected_by_reason"] == {"ingest/not_an_article": 1}
    assert streams["text"]["read"] == 697 + 30
    assert streams["synthetic_caption"] == {
        "read": 2, "kept": 1, "rejected": 1,
        "rejected_by_reason": {"ingest/no_matching_image": 1}, "item_rejects_by_reason": {},
    }  # fmt: skip
    for name, st in streams.items():
        assert st["read"] == st["kept"] + st["rejected"], name
    out = tmp_path / "out"
    captions = pads.dataset(out / "caption").to_table()
    assert captions.num_rows == 159
    assert sum(len(c) for c in captions.column("captions").to_pylist()) == 795 + 1
    rejects = pads.dataset(out / "rejects" / "caption").to_table()
    assert rejects.num_rows == 10_000
    assert stats["wall_s"] >= stats["ray_start_s"] >= 0


def test_bundled_sample_ingests_with_no_flags(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["ingest", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "mm1data-ingest" / "stats.json").read_text())
    assert {k: v["kept"] for k, v in stats["streams"].items()} == {
        "caption": 40,
        "interleaved": 10,
        "text": 30,
    }


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mm1data.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_missing_input_fails_fast_with_one_line_and_exit_2(tmp_path):
    proc = _run_cli("ingest", "--text", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: input not found: {tmp_path / 'nope.jsonl'}"


def test_unknown_format_fails_fast_with_exit_2(tmp_path):
    weird = tmp_path / "data.xyz"
    weird.write_text("hello")
    proc = _run_cli("ingest", "--text", str(weird), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "cannot tell the text format" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _run_cli("ingest", "--text", f"pdf:{weird}", "--output", str(tmp_path / "o"))
    assert proc.returncode == 2 and "unknown text format 'pdf'" in proc.stderr


def test_bad_recipe_key_fails_with_exit_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sources:\n  captionz: []\n")
    proc = _run_cli("ingest", "--config", str(recipe))
    assert proc.returncode == 2
    assert "unknown key 'captionz'" in proc.stderr


def test_bad_corpus_is_accounted_for_and_the_job_finishes(ray_local, tmp_path, bad_dir):
    args = [
        "ingest", "--quiet", "--output", str(tmp_path / "out"),
        "--captions", str(bad_dir / "captions.tar"), "--captions", str(bad_dir / "truncated.tar"),
        "--text", str(bad_dir / "text.jsonl"),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    streams = json.loads((tmp_path / "out" / "stats.json").read_text())["streams"]
    assert streams["caption"]["read"] == 11 + 8 and streams["caption"]["kept"] == 2
    assert streams["text"] == {
        "read": 8, "kept": 1, "rejected": 7,
        "rejected_by_reason": {
            "ingest/empty_text": 1, "ingest/invalid_field": 1, "ingest/invalid_json": 2,
            "ingest/invalid_utf8": 1, "ingest/missing_field": 1, "ingest/text_too_long": 1,
        },
        "item_rejects_by_reason": {},
    }  # fmt: skip
    rejects = pads.dataset(tmp_path / "out" / "rejects").to_table()
    assert rejects.num_rows == 17 + 7
