"""The file shuffle of ``cogroup`` against the in-process reference, and its folder's lifetime."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from mm1data.runners.shuffle import cogroup, cogroup_local, hash64, partitions_for, shuffle_files


def _tables() -> dict[str, pa.Table]:
    left = [f"key{i % 53}" for i in range(700)]
    right = [f"key{i % 71}" for i in range(300)]
    return {
        "left": pa.table({"k": hash64(left), "v": list(range(700))}),
        "right": pa.table({"k": hash64(right), "w": [str(i) for i in range(300)]}),
    }


def test_file_shuffle_gives_every_partition_its_rows_whatever_the_blocks(ray_local, tmp_path):
    import ray.data

    def _join_counts(parts: dict[str, pa.Table]) -> pa.Table:
        """Per key of this partition: rows on the left, rows on the right (order-independent)."""
        left, right = parts["left"], parts["right"]
        keys = sorted(set(left.column("k").to_pylist()) | set(right.column("k").to_pylist()))
        return pa.table(
            {
                "k": pa.array(keys, pa.int64()),
                "left": [pc.sum(pc.equal(left.column("k"), k)).as_py() or 0 for k in keys],
                "right": [pc.sum(pc.equal(right.column("k"), k)).as_py() or 0 for k in keys],
            }
        )

    tables = _tables()
    by = {"left": "k", "right": "k"}
    expected = cogroup_local(tables, by, 7, _join_counts).sort_by("k")
    for blocks in (1, 5, 13):
        inputs = {n: ray.data.from_arrow(t).repartition(blocks) for n, t in tables.items()}
        with shuffle_files(str(tmp_path / "shuffle")):
            got = pa.concat_tables(ray.get(cogroup(inputs, by, 7, _join_counts).to_arrow_refs())).sort_by("k")
            assert any((tmp_path / "shuffle").rglob("*.pieces"))
        assert got.equals(expected), blocks
        assert not (tmp_path / "shuffle").exists()  # emptied when the run ends
    assert sum(expected.column("left").to_pylist()) == 700
    assert sum(expected.column("right").to_pylist()) == 300


def test_partitions_grow_with_rows_and_with_bytes():
    assert partitions_for(0) == 1
    assert partitions_for(250, 100) == 3
    assert partitions_for(10, 100, nbytes=1000, bytes_per_partition=300) == 4  # payload decides
    assert partitions_for(10, 100, nbytes=5 * 2**30) == 80  # 5 GiB of images: 64 MiB per task


def test_streamed_input_reaches_fn_in_slices_with_the_same_rows(ray_local, tmp_path, monkeypatch):
    import ray.data

    from mm1data.runners import shuffle

    def _right_count(parts: dict[str, pa.Table]) -> pa.Table:
        """Per left row: how many right rows share its key, and how many left rows this call saw."""
        left, right = parts["left"], parts["right"]
        counts: dict[int, int] = {}
        for k in right.column("k").to_pylist():
            counts[k] = counts.get(k, 0) + 1
        n = [counts.get(k, 0) for k in left.column("k").to_pylist()]
        return pa.table(
            {"v": left.column("v"), "right": pa.array(n, pa.int64()), "seen": [left.num_rows] * len(n)}
        )

    tables, by = _tables(), {"left": "k", "right": "k"}
    expected = cogroup_local(tables, by, 7, _right_count).sort_by("v")
    inputs = {n: ray.data.from_arrow(t).repartition(13) for n, t in tables.items()}
    monkeypatch.setattr(shuffle, "STREAM_BYTES", 1)  # every piece its own slice
    with shuffle_files(str(tmp_path / "shuffle")):
        got = cogroup(inputs, by, 7, _right_count, stream="left")
        got = pa.concat_tables(ray.get(got.to_arrow_refs())).sort_by("v")
    assert got.select(["v", "right"]).equals(expected.select(["v", "right"]))
    assert got.num_rows == 700 and sum(got.column("right").to_pylist()) > 0
    # fn saw the left rows of a partition a block's piece at a time, never the whole partition
    assert max(got.column("seen").to_pylist()) < min(expected.column("seen").to_pylist())
