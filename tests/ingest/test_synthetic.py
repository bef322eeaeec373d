"""Synthetic captions are read line by line and joined onto caption pairs by sha256 or id."""

from __future__ import annotations

import json

import pyarrow as pa

from mm1data.ingest.synthetic import _line_hash, attach_captions, match_lines, pair_keys, with_row_hash
from mm1data.schemas import CAPTION_PAIR
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
        {"sha256": "0" * 64, "caption": "Nobody has this image.", "generator": "capgen-v1"},
    ]
    path = tmp_path / "synthetic.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    synthetic = pa.Table.from_pylist(read_rows("synthetic_caption", "jsonl", path))
    assert [(r or {}).get("reason") for r in synthetic.column("reject").to_pylist()] == [
        None,
        None,
        "missing_field",
        None,
        "invalid_json",
    ]

    pairs = pa.Table.from_pylist(rows[:3], schema=CAPTION_PAIR)
    matched = match_lines({"keys": pair_keys(pairs), "lines": _line_hash(synthetic)})
    verdicts = matched.filter(pa.compute.is_null(matched.column("row")))
    assert [(r or {}).get("reason") for r in verdicts.column("reject").to_pylist()] == [
        None,
        None,
        "missing_field",
        "no_matching_image",
        "invalid_json",
    ]
    found = matched.filter(pa.compute.is_valid(matched.column("row")))
    out = attach_captions({"pairs": with_row_hash(pairs, "caption"), "matches": found})
    captions = out.column("captions").to_pylist()
    assert captions[0][-1] == {"text": "A model-written description.", "provenance": "synthetic:capgen-v1"}
    assert captions[1][-1]["provenance"] == "synthetic:capgen-v2"
    assert {c["provenance"] for c in captions[0]} == {"human", "synthetic:capgen-v1"}
    assert len(captions[2]) == 5  # untouched
    assert "_row" not in out.column_names
