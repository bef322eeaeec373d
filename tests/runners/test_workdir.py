"""Checkpoint blocks: written whole under the hash of their bytes, read back a row group at a time."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mm1data.runners import workdir
from mm1data.runners.workdir import read_files, read_groups, select_rows, write_block
from mm1data.schemas import REJECT_INFO


def _block(n: int) -> pa.Table:
    reject = [None if i % 3 else {"stage": "filter", "reason": f"r{i % 5}", "detail": None} for i in range(n)]
    return pa.table(
        {
            "id": [f"doc{i:05d}" for i in range(n)],
            "image": [bytes([i % 251]) * 2000 for i in range(n)],
            "reject": pa.array(reject, REJECT_INFO),
        }
    )


def _counted(table: pa.Table) -> pa.Table:
    return pa.table({"rows": [table.num_rows]})


def test_read_files_keeps_the_chosen_rows_of_every_row_group(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir, "ROW_GROUP_BYTES", 100_000)  # several row groups per file
    block = _block(500)
    assert write_block(block, str(tmp_path), _counted, ()).column("rows").to_pylist() == [500]
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == ".parquet"]
    assert pq.ParquetFile(path).num_row_groups > 3
    paths = pa.table({"path": [str(path)]})

    groups = list(read_files(paths, None))
    assert pa.concat_tables(groups).equals(block)
    kept = pa.concat_tables(read_files(paths, ["id", "image"], rows="kept"))
    rejected = pa.concat_tables(read_files(paths, ["id"], rows="rejected"))
    assert kept.column_names == ["id", "image"] and rejected.column_names == ["id"]
    assert kept.equals(block.filter(pc.is_null(block.column("reject"))).select(["id", "image"]))
    assert rejected.column("id").to_pylist() == [f"doc{i:05d}" for i in range(0, 500, 3)]
    assert kept.num_rows + rejected.num_rows == block.num_rows
    assert select_rows(block, "kept").equals(block.filter(pc.is_null(block.column("reject"))))


def test_write_block_names_the_file_by_its_bytes(tmp_path):
    block = _block(50)
    for _ in range(2):  # a retried task rewrites the same file, it adds none
        write_block(block, str(tmp_path), _counted, ())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".parquet")  # and no .partial file left
    assert pq.read_table(tmp_path / files[0]).equals(block)


def test_read_groups_cut_files_into_runs_of_bounded_bytes():
    files = [("a", 10), ("b", 30), ("c", 30), ("d", 100), ("e", 5), ("f", 5)]
    assert read_groups(files, 64) == [["a", "b"], ["c"], ["d"], ["e", "f"]]
    assert read_groups(files, 1000) == [["a", "b", "c", "d", "e", "f"]]
    assert read_groups([("only", 0)], 64) == [["only"]]
