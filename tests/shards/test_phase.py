"""The write phase's manifest order: shard rows come back sorted by (partition, index) whatever
order the blocks hold them in, one sort when few, range partitions sorted in tasks when many."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mm1data.shards.phase import LOCAL_SORT_ROWS, sorted_rows, sorted_tables


def _shard_rows(n: int, parts: int, seed: int) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    part = rng.integers(0, parts, n).astype(np.int32)
    order = rng.permutation(n)  # distinct (part, index) pairs in a random order
    index = np.arange(n, dtype=np.int32)[order]
    table = pa.table({"shard_part": part, "shard_index": index, "path": [f"s{i}" for i in range(n)]})
    return [table.slice(i, 4_000) for i in range(0, n, 4_000)]


@pytest.mark.parametrize("n", [500, 3 * LOCAL_SORT_ROWS + 17])
def test_sorted_rows_streams_shard_rows_in_manifest_order(ray_local, n):
    import ray.data

    blocks = _shard_rows(n, parts=37, seed=n)
    rows = list(sorted_rows(sorted_tables(ray.data.from_arrow(blocks), n, 37)))
    expected = pa.concat_tables(blocks).sort_by([("shard_part", "ascending"), ("shard_index", "ascending")])
    assert [(r["shard_part"], r["shard_index"], r["path"]) for r in rows] == list(
        zip(*expected.to_pydict().values(), strict=True)
    )


def test_sequence_chunks_take_whole_sequences_in_order(monkeypatch):
    """A shard's rows are copied in sorted order a few sequences at a time, never splitting one."""
    from mm1data.shards import phase

    monkeypatch.setattr(phase, "TAKE_ROWS", 5)
    seqs = np.repeat(np.arange(8), [3, 1, 4, 2, 6, 1, 1, 2])  # 20 rows, sorted by sequence
    t = pa.chunked_array([np.arange(10)[::-1], np.arange(10, 20)[::-1]])  # rows stored unsorted
    t = pa.table({"row": t})
    rows = pa.array(np.r_[np.arange(10)[::-1], np.arange(10, 20)[::-1]].astype(np.uint64))
    chunks = list(phase._sequence_chunks(t, rows, seqs))
    assert pa.concat_tables(chunks).column("row").to_pylist() == list(range(20))
    bounds = np.cumsum([0] + [c.num_rows for c in chunks])
    assert all(seqs[b - 1] != seqs[b] for b in bounds[1:-1])  # cut between sequences only
    assert len(chunks) > 1 and all(c.num_rows >= 5 for c in chunks[:-1])
