"""Synthetic captions are read, indexed, and joined onto caption pairs by sha256 or id."""

from __future__ import annotations

import json

from mm1data.config import SourceSpec
from mm1data.ingest.synthetic import AttachSynthetic, read_synthetic, synthetic_index
from tests.ingest.conftest import read_rows


def test_pairs_gain_synthetic_captions_by_sha_and_by_id(tmp_path, shared_data):
    rows = read_rows("caption", "coco", shared_data / "a-coco-mini" / "annotations" / "captions_val2017.json")
    first, second = rows[0], rows[1]
    lines = [
        {
            "sha256": first["image_sha256"],
            "caption": "A model-written description.",
            "generator": "capgen-v1",
        },
        {"id": second["id"], "caption": "Another one.", "generator": "capgen-v2"},
        {"caption": "no key at all"},
    ]
    path = tmp_path / "synthetic.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    table, bad = read_synthetic([SourceSpec(path=str(path))])
    assert table.num_rows == 2
    assert [b["reason"] for b in bad] == ["missing_field", "invalid_json"]

    import pyarrow as pa

    from mm1data.schemas import CAPTION_PAIR

    batch = pa.Table.from_pylist(rows[:3], schema=CAPTION_PAIR)
    out = AttachSynthetic(synthetic_index(table))(batch).column("captions").to_pylist()
    assert out[0][-1] == {"text": "A model-written description.", "provenance": "synthetic:capgen-v1"}
    assert out[1][-1]["provenance"] == "synthetic:capgen-v2"
    assert {c["provenance"] for c in out[0]} == {"human", "synthetic:capgen-v1"}
    assert len(out[2]) == 5  # untouched
