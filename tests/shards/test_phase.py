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
