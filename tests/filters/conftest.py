"""Real documents for the filter tests, loaded once and looked up by id."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest

from mm1data.schemas import TEXT_DOC


@pytest.fixture(scope="session")
def dolma_docs(shared_data) -> dict[str, str]:
    """The 697 Dolma CC docs, ``{id: text}``."""
    path = next((shared_data / "c-text").glob("dolma-CC-*.jsonl.gz"))
    with gzip.open(path, "rt") as f:
        return {d["id"]: d["text"] for d in map(json.loads, f)}


def text_table(texts: dict[str, str]) -> pa.Table:
    """A TextDoc batch of ``{id: text}``."""
    rows = [
        {"id": k, "text": v, "lineage": {"source": "test", "offset": i}}
        for i, (k, v) in enumerate(texts.items())
    ]
    return pa.Table.from_pylist(rows, schema=TEXT_DOC)
