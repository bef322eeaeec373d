"""Batched maps after a read of file paths: a task per file, ``fn`` given bounded slices."""

from __future__ import annotations

import pyarrow as pa

from mm1data.runners.pipeline import map_in_slices
from mm1data.runners.workdir import read_files, write_block


def test_map_after_a_read_of_paths_runs_a_task_per_file_in_slices(ray_local, tmp_path):
    import ray
    import ray.data

    def _tagged(table: pa.Table) -> pa.Table:
        """Each row with the Ray task that mapped it and the size of the slice it came in."""
        task = ray.get_runtime_context().get_task_id()
        n = table.num_rows
        return table.append_column("task", pa.array([task] * n)).append_column("slice", pa.array([n] * n))

    files = 5
    for f in range(files):
        block = pa.table({"file": [f] * 40, "row": list(range(40))})
        write_block(block, str(tmp_path / "blocks"), lambda t: t.slice(0, 0), ())
    paths = sorted(str(p) for p in (tmp_path / "blocks").iterdir())
    assert len(paths) == files
    read = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=files).map_batches(
        read_files, fn_args=(None,), batch_size=1, batch_format="pyarrow"
    )
    out = pa.concat_tables(ray.get(map_in_slices(read, _tagged, (), 16).to_arrow_refs()))

    assert sorted(zip(out.column("file").to_pylist(), out.column("row").to_pylist(), strict=True)) == [
        (f, r) for f in range(files) for r in range(40)
    ]
    assert max(out.column("slice").to_pylist()) <= 16
    by_task: dict[str, set[int]] = {}
    for task, f in zip(out.column("task").to_pylist(), out.column("file").to_pylist(), strict=True):
        by_task.setdefault(task, set()).add(f)
    # with map_batches(batch_size=16) Ray gathers 16 paths into one task: one task read all 5 files
    assert len(by_task) == files and all(len(fs) == 1 for fs in by_task.values())
