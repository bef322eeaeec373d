"""The generated schema snapshot in schemas/ must match the code."""

import json

import pyarrow as pa

from mm1data.schemas import ALL_SCHEMAS, CAPTION_PAIR, SCHEMA_VERSION, schemas_as_json


def test_snapshot_matches_code(repo_root):
    snapshot = json.loads((repo_root / "schemas" / "records.json").read_text())
    assert snapshot == schemas_as_json(), "run: python -m mm1data.schemas > schemas/records.json"


def test_every_schema_is_named_and_versioned():
    for name, schema in ALL_SCHEMAS.items():
        assert schema.metadata[b"name"].decode() == name
        assert schema.metadata[b"version"].decode() == SCHEMA_VERSION


def test_caption_pair_round_trips_a_row():
    row = {
        "id": "coco:1",
        "image": b"\xff\xd8",
        "captions": [{"text": "a dog", "provenance": "human"}, {"text": "dog.jpg", "provenance": "alt_text"}],
        "lineage": {"source": "x.json", "offset": 3},
    }
    table = pa.Table.from_pylist([row], schema=CAPTION_PAIR)
    back = table.to_pylist()[0]
    assert back["captions"][1]["provenance"] == "alt_text"
    assert back["reject"] is None
