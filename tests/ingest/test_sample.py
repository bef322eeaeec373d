"""The ingest sample of `mm1data plan`: seeded per record, the same whatever the batches, and
records left out are accounted for as `ingest/not_sampled` rejects with their payload nulled."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mm1data.config import SampleConfig
from mm1data.errors import UsageError
from mm1data.ingest.sample import NOT_SAMPLED, draws, sample_rows
from mm1data.schemas import TEXT_DOC


def docs(n: int, bad: int = 0) -> pa.Table:
    rows = [
        {"id": f"c4:{i}", "text": f"document {i}", "lineage": {"source": "/data/c4.jsonl", "offset": i}}
        for i in range(n)
    ]
    for i in range(bad):
        rows[i]["text"] = None
        rows[i]["reject"] = {"stage": "ingest", "reason": "empty_text"}
    return pa.Table.from_pylist(rows, schema=TEXT_DOC)


def test_the_same_records_are_drawn_whatever_the_batches():
    table = docs(5000)
    cfg = SampleConfig(0.1, seed=3)
    whole = sample_rows(table, "text", cfg)
    parts = pa.concat_tables(sample_rows(table.slice(i, 333), "text", cfg) for i in range(0, 5000, 333))
    assert whole.equals(parts)
    kept = whole.filter(pa.compute.is_null(whole.column("reject")))
    assert 430 <= kept.num_rows <= 570  # Binomial(5000, 0.1): mean 500, sd 21
    other = sample_rows(table, "text", SampleConfig(0.1, seed=4))
    assert other.filter(pa.compute.is_null(other.column("reject"))).column("id") != kept.column("id")


def test_draws_are_uniform_and_depend_on_stream_and_lineage():
    table = docs(20000)
    d = draws(table, "text", 0)
    assert abs(d.mean() - 0.5) < 0.01 and 0 <= d.min() and d.max() < 1
    assert (d < 0.25).mean() == pytest.approx(0.25, abs=0.01)
    assert (draws(table, "interleaved", 0) != d).all()
    moved = table.set_column(
        table.schema.get_field_index("lineage"),
        "lineage",
        pa.array(
            [{"source": "/copy/c4.jsonl", "offset": i} for i in range(20000)],
            table.schema.field("lineage").type,
        ),
    )
    same = (draws(moved, "text", 0) < 0.1) == (d < 0.1)
    assert same.mean() < 0.85  # a copied file is drawn independently (its duplicates too)


def test_left_out_records_become_light_rejects_and_ingest_rejects_keep_their_reason():
    out = sample_rows(docs(400, bad=40), "text", SampleConfig(0.2))
    rejects = out.column("reject").to_pylist()
    reasons = [r["reason"] if r else None for r in rejects]
    assert reasons[:40] == ["empty_text"] * 40  # ingest's own reasons are never replaced
    left_out = [i for i, r in enumerate(reasons) if r == NOT_SAMPLED]
    assert 0.7 * 360 < len(left_out) < 0.9 * 360
    assert all(rejects[i]["stage"] == "ingest" for i in left_out)
    texts, ids = out.column("text").to_pylist(), out.column("id").to_pylist()
    assert all(texts[i] is None and ids[i] == f"c4:{i}" for i in left_out)
    assert out.num_rows == 400  # read = kept + rejected


def test_a_fraction_outside_0_1_fails_fast():
    with pytest.raises(UsageError, match="sample fraction"):
        SampleConfig(0.0)
    with pytest.raises(UsageError, match="sample fraction"):
        SampleConfig(1.5)
    assert sample_rows(docs(10), "text", SampleConfig(1.0)).equals(docs(10))
