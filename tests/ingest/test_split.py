"""A large Parquet source is read by many tasks: its row groups are split into units, and the
units together yield exactly the records (ids, offsets, payload) of the whole file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mm1data.config import IngestConfig
from mm1data.ingest import read_unit
from mm1data.ingest.base import Unit, split_parquet
from mm1data.ingest.job import split_units


def _rows(unit: Unit) -> list[dict]:
    return [r for t in read_unit(unit, IngestConfig()) for r in t.to_pylist()]


@pytest.mark.parametrize(
    ("stream", "fmt", "columns"),
    [
        (
            "caption",
            "parquet",
            lambda n, rng: {"jpg": [rng.bytes(3_000) for _ in range(n)], "caption": ["a"] * n},
        ),
        ("text", "parquet", lambda n, rng: {"text": [f"words {i} " * 20 for i in range(n)]}),
        ("interleaved", "obelics", lambda n, rng: {"texts": [["t"]] * n, "images": [[None]] * n}),
    ],
)
def test_row_group_units_read_the_same_records_as_the_whole_file(tmp_path, stream, fmt, columns):
    rng = np.random.default_rng(1)
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table(columns(300, rng)), path, row_group_size=32)  # 10 row groups, no ids
    whole = Unit(stream=stream, format=fmt, path=str(path))
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
    units = split_parquet(whole, 3 * max(sizes))
    assert len(units) > 2
    bounds = [u.row_groups for u in units]
    assert bounds[0][0] == 0 and bounds[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))  # consecutive, no gap
    assert all(sum(sizes[a:b]) <= 3 * max(sizes) for a, b in bounds)
    assert [u.first_row for u in units] == [32 * a for a, _ in bounds]
    parts = [r for u in units for r in _rows(u)]
    assert parts == _rows(whole)
    assert [r["lineage"]["offset"] for r in parts] == list(range(300))


def test_split_units_keeps_other_formats_and_unreadable_files_whole(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    units = [Unit("caption", "parquet", str(bad)), Unit("text", "jsonl", str(tmp_path / "t.jsonl"))]
    out = split_units(pa.table({"unit": [u.to_json() for u in units]}))
    assert [Unit.from_json(t) for t in out.column("unit").to_pylist()] == units
