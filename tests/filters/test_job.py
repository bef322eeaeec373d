"""`mm1data filter` end to end on Ray: conservation per stage, corpus-wide counting phases."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from mm1data.cli import main
from mm1data.schemas import CAPTION_PAIR, INTERLEAVED_DOC
from tests.filters.conftest import text_table


def write_stream(table: pa.Table, folder) -> None:
    folder.mkdir(parents=True)
    pq.write_table(table.drop_columns(["reject"]), folder / "part-0.parquet")


def test_filter_command_conserves_records_per_stage(ray_local, tmp_path, shared_data, dolma_docs):
    coco = sorted((shared_data / "a-coco-mini" / "val2017").glob("*.jpg"))[:12]
    ann = json.loads((shared_data / "a-coco-mini" / "annotations" / "captions_val2017.json").read_text())
    caption = [a["caption"] for a in ann["annotations"]]
    # 12 real COCO pairs; 11 of them share one boilerplate caption (over max_repeats=10)
    pairs = [
        {
            "id": f"p{i}",
            "image": p.read_bytes(),
            "image_sha256": p.stem,
            "captions": [{"text": "Click here to enlarge this picture", "provenance": "alt_text"}]
            + ([{"text": caption[i], "provenance": "human"}] if i == 0 else []),
            "lineage": {"source": "t", "offset": i},
        }
        for i, p in enumerate(coco)
    ]
    # 12 interleaved docs sharing one logo URL (over 10) plus their own COCO image
    text = next(t for t in dolma_docs.values() if len(t) > 2000)
    docs = [
        {
            "id": f"d{i}",
            "items": [
                {"kind": "text", "text": text, "position": 0},
                {"kind": "image", "image": coco[i].read_bytes(), "url": f"http://x/{i}.jpg", "position": 1},
                {"kind": "image", "image": coco[0].read_bytes(), "url": "http://x/logo.jpg", "position": 2},
            ],
            "lineage": {"source": "t", "offset": i},
            "item_rejects": [],
        }
        for i in range(12)
    ]
    ingest = tmp_path / "ingest"
    write_stream(pa.Table.from_pylist(pairs, schema=CAPTION_PAIR), ingest / "caption")
    write_stream(pa.Table.from_pylist(docs, schema=INTERLEAVED_DOC), ingest / "interleaved")
    write_stream(text_table(dict(list(dolma_docs.items())[:200])), ingest / "text")

    result = CliRunner().invoke(
        main, ["filter", "--input", str(ingest), "--output", str(tmp_path / "out")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())["streams"]
    for stream, s in stats.items():
        assert s["read"] == s["kept"] + s["rejected"], stream
        for st in s["stages"]:
            assert st["in"] == st["kept"] + sum(st["dropped"].values()), (stream, st)
    assert stats["text"]["read"] == 200
    assert stats["caption"]["rejected_by_reason"] == {"caption_repeats/repeated_caption": 11}
    assert stats["interleaved"]["item_rejects_by_reason"]["image_url_repeats/frequent_image_url"] == 12
    kept = pq.read_table(tmp_path / "out" / "text")
    assert kept.num_rows == stats["text"]["kept"] and "reject" not in kept.column_names
    assert set(kept.column("language").to_pylist()) == {"en"}


def test_filter_command_without_ingest_output_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["filter", "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no ingest output" in result.output
