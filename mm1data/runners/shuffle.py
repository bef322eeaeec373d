"""The one shuffle primitive: co-partition datasets by an integer key, then run a pure function
per partition.

Every global step of mm1data (joins, group-bys, dedup components, plan partitions, reject parts)
is a :func:`cogroup`: each input row goes to partition ``key mod partitions`` (keys are uniform
64-bit hashes, see :func:`hash64`), and ``fn(parts, *args)`` is called once per partition with
``{input name: pa.Table}`` of that partition's rows (an input with no rows there gets an empty
table of its schema). ``fn`` is pure, vectorized and must not depend on row order (sort inside
when order matters), so the result does not depend on the number of blocks or workers.

Two executions, the same semantics:

- ``partitions > 1``: a shuffle through files, as Spark and datatrove do it. A map task per input
  block sorts the block by partition and writes one file: the pieces (Arrow IPC streams) one after
  another, then their ``partitions + 1`` byte offsets. A reduce task per partition lists the
  files and reads only its own piece of each (two range reads; memory-mapped on a local disk),
  then calls ``fn``. Memory per task is about 1/partitions of the inputs (callers size
  ``partitions`` from row counts with :func:`partitions_for`, so it grows with the data), less
  for an input named ``stream`` (handed to ``fn`` a slice at a time), and the driver holds no
  piece: a Ray shuffle keeps a reference and metadata per (block, partition) pair in the driver,
  blocks × partitions of them, and pieces under 100 KiB inline in its heap (2.4 GiB at 10M rows).
  The files live under :func:`shuffle_files`'s folder (the build's ``_work/_shuffle``, on S3 too)
  or a temporary folder.
- ``partitions == 1`` (small inputs): every block goes to one Ray task, with no shuffle and no
  aggregator actors, so small builds pay no fixed shuffle cost.

:func:`cogroup_local` runs the same ``fn`` in-process on tables, for tests and tools.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mm1data.runners.ray_session import release_memory, remote_task

PartitionFn = Callable[..., pa.Table]
_ROOTS: list[str] = []  # the shuffle folder of the run in progress (innermost last)


def hash64(values: Sequence[str | bytes]) -> np.ndarray:
    """Stable signed 64-bit hashes (blake2b) of strings or bytes: the same on every machine."""
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        b = v.encode() if isinstance(v, str) else v
        out[i] = int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little", signed=True)
    return out


_MIX = np.uint64(0xBF58476D1CE4E5B9)


def mix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit integer mixer (splitmix64's finalizer) of int64 values, as int64: to spread keys
    that are not hashes already (shard numbers, pairs of ids) over partitions."""
    u = np.asarray(x, dtype=np.int64).view(np.uint64)
    u = u ^ (u >> np.uint64(31))
    u = u * _MIX
    return (u ^ (u >> np.uint64(32))).view(np.int64)


def partition_of(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Partition index of int64 hash keys (their unsigned value mod ``partitions``)."""
    return (np.asarray(keys, dtype=np.int64).view(np.uint64) % np.uint64(partitions)).astype(np.int64)


ROWS_PER_TASK = 100_000
"""About how many rows one task of a co-partitioned step holds: partition counts are rows / this,
so a task's memory stays the same whatever the size of the data (benchmarks/growth.py)."""


BYTES_PER_TASK = 64 * 1024**2
"""About how many bytes of rows one task of a co-partitioned step holds, when the rows carry
payload (records with image bytes): 100k rows of 50 KB images would be 5 GB in one task. A task
holds its partition, its function's output and the output's blocks (a few times this)."""


def partitions_for(
    rows: int,
    rows_per_partition: int = ROWS_PER_TASK,
    nbytes: int = 0,
    bytes_per_partition: int | None = None,
) -> int:
    """How many partitions ``rows`` (of ``nbytes`` in all, when known) need at ``rows_per_partition``
    and ``bytes_per_partition`` (default :data:`BYTES_PER_TASK`) each (at least one)."""
    per_bytes = max(1, bytes_per_partition or BYTES_PER_TASK)
    return max(1, math.ceil(rows / max(1, rows_per_partition)), math.ceil(nbytes / per_bytes))


def join_indices(
    left: pa.Array | pa.ChunkedArray, right: pa.Array | pa.ChunkedArray
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (left, right) of the inner equi-join of two key arrays, sorted by (left, right)."""
    lt = pa.table({"k": left, "li": pa.array(np.arange(len(left), dtype=np.int64))})
    rt = pa.table({"k": right, "ri": pa.array(np.arange(len(right), dtype=np.int64))})
    j = lt.join(rt, "k", join_type="inner", use_threads=False)
    li, ri = j.column("li").to_numpy(), j.column("ri").to_numpy()
    order = np.lexsort((ri, li))
    return li[order], ri[order]


def _ipc(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _write_pieces(table: pa.Table, key: str, partitions: int, folder: str) -> pa.Table:
    """Map task: write ``table``'s rows sorted by partition as one file under ``folder`` (pieces,
    then ``partitions + 1`` int64 offsets); returns its row count. The name starts with a hash of
    the content, so files are listed in an order that does not depend on scheduling; the pieces go
    to the file one at a time (:func:`~mm1data.runners.workdir.content_named`)."""
    from mm1data.io.fs import fsspec_fs
    from mm1data.runners.workdir import content_named

    n = table.num_rows
    if n:
        part = partition_of(table.column(key).to_numpy(), partitions)
        order = np.argsort(part, kind="stable")
        table = table.take(pa.array(order))
        bounds = np.r_[0, np.cumsum(np.bincount(part, minlength=partitions))]
        offsets, at = np.zeros(partitions + 1, np.int64), 0
        fs, base = fsspec_fs(folder)
        with content_named(fs, base, lambda digest: f"{digest}-{uuid.uuid4().hex[:8]}.pieces", 12) as sink:
            for p in np.flatnonzero(np.diff(bounds)).tolist():
                piece = _ipc(table.slice(bounds[p], bounds[p + 1] - bounds[p]))
                offsets[p], at = at, at + piece.size
                offsets[p + 1 :] = at
                sink.write(piece)
                del piece
            del table  # (the sorted copy)
            sink.write(offsets.tobytes())
        release_memory()
    return pa.table({"rows": pa.array([n], pa.int64())})


def _read_pieces(folder: str, partition: int, partitions: int) -> Iterator[pa.Table]:
    """Reduce side: this partition's piece of every file under ``folder`` (in name order). On a
    local disk a piece is memory-mapped, not read: its rows stay file pages the system can drop,
    not the task's own memory."""
    from mm1data.io.fs import fsspec_fs, is_local

    fs, path = fsspec_fs(folder)
    if not fs.exists(path):
        return
    files = fs.find(path, detail=True)
    local = is_local(fs)
    for name in sorted(n for n in files if n.endswith(".pieces")):
        f = pa.memory_map(name) if local else fs.open(name, "rb")
        try:
            f.seek(files[name]["size"] - 8 * (partitions + 1) + 8 * partition)
            start, end = np.frombuffer(f.read(16), np.int64).tolist()
            if end > start:
                f.seek(start)
                data = f.read_buffer(end - start) if local else pa.py_buffer(f.read(end - start))
                yield pa.ipc.open_stream(data).read_all()
        finally:
            f.close()  # (a memory map stays mapped while the table's buffers use it)


def _reduce(
    batch: pa.Table, folders: list[str], fn: PartitionFn, names, schemas, partitions, args
) -> pa.Table:
    """Reduce task: ``fn`` over one partition's rows of every input."""
    (partition,) = batch.column("id").to_pylist()
    tables = [list(_read_pieces(folder, partition, partitions)) for folder in folders]
    out = _call(fn, names, schemas, tables, args)
    del tables
    release_memory()
    return out


STREAM_BYTES = 16 * 1024**2
"""Arrow bytes of the streamed input a reduce task hands ``fn`` at a time (see :func:`cogroup`)."""


def _reduce_streaming(
    batch: pa.Table,
    folders: list[str],
    fn: PartitionFn,
    names,
    schemas,
    partitions,
    args,
    stream: str,
    slice_bytes: int,
) -> Iterator[pa.Table]:
    """Reduce task of a cogroup with a streamed input: the other inputs' rows of this partition
    whole, then ``fn`` over slices of about ``slice_bytes`` of the streamed input's rows."""
    (partition,) = batch.column("id").to_pylist()
    at = names.index(stream)
    tables = [[] if i == at else list(_read_pieces(f, partition, partitions)) for i, f in enumerate(folders)]
    pending: list[pa.Table] = []
    size, calls = 0, 0
    for piece in _read_pieces(folders[at], partition, partitions):
        pending.append(piece)
        size += piece.nbytes
        if size >= slice_bytes:
            tables[at] = pending
            yield _call(fn, names, schemas, tables, args)
            pending, size, calls = [], 0, calls + 1
            release_memory()
    if pending or not calls:
        tables[at] = pending
        yield _call(fn, names, schemas, tables, args)
    del tables, pending
    release_memory()


@contextlib.contextmanager
def shuffle_files(root: str) -> Iterator[None]:
    """Cogroups inside this block write their pieces under ``root`` (a folder on storage every
    Ray node reads, such as the build's ``_work/_shuffle``), which is emptied on entry and exit."""
    from mm1data.io.fs import fsspec_fs

    fs, path = fsspec_fs(root)

    def clear() -> None:
        if fs.exists(path):
            fs.rm(path, recursive=True)

    clear()
    _ROOTS.append(root)
    try:
        yield
    finally:
        _ROOTS.pop()
        clear()


@functools.cache
def _temporary_root() -> str:
    root = tempfile.mkdtemp(prefix="mm1data-shuffle-")
    atexit.register(shutil.rmtree, root, True)
    return root


def _call(
    fn: PartitionFn,
    names: Sequence[str],
    schemas: Sequence[pa.Schema],
    tables: list[list[pa.Table]],
    args: Sequence[Any],
) -> pa.Table:
    parts = {}
    for name, schema, ts in zip(names, schemas, tables, strict=True):
        ts = [t for t in ts if t.num_rows]
        parts[name] = pa.concat_tables(ts, promote_options="permissive") if ts else schema.empty_table()
    return fn(parts, *args)


def _base_schema(ds) -> pa.Schema:
    schema = ds.schema()
    arrow = getattr(schema, "base_schema", schema)
    if not isinstance(arrow, pa.Schema):
        raise TypeError("cogroup inputs must be Arrow-backed datasets")
    return arrow


def cogroup(
    inputs: dict[str, Any],
    by: dict[str, str],
    partitions: int,
    fn: PartitionFn,
    args: Sequence[Any] = (),
    schemas: dict[str, pa.Schema] | None = None,
    stream: str | None = None,
):
    """Co-partition the Ray datasets ``inputs`` by their int64 column ``by[name]`` into
    ``partitions`` and return the Ray dataset of ``fn(parts, *args)`` over every partition.

    ``schemas`` gives an input's schema when it cannot be read from the dataset (for example a
    dataset with no blocks); empty partitions of an input arrive as empty tables of that schema.

    ``stream`` names an input that ``fn`` treats row by row: each output row comes from one row
    of it, given the whole partition of the other inputs (a join that applies verdicts to records,
    say). A reduce task then holds that input :data:`STREAM_BYTES` at a time, not its whole
    partition, and calls ``fn`` once per slice: for inputs that carry payload (image bytes)."""
    import ray
    import ray.data

    names = list(inputs)
    schemas = schemas or {}
    arrow_schemas = [schemas.get(n) or _base_schema(inputs[n]) for n in names]
    if partitions <= 1:
        refs = [inputs[n].to_arrow_refs() for n in names]
        counts = [len(r) for r in refs]
        out = remote_task(_single).remote(fn, names, arrow_schemas, counts, args, *sum(refs, []))
        return ray.data.from_arrow_refs([out])
    root = f"{_ROOTS[-1] if _ROOTS else _temporary_root()}/{uuid.uuid4().hex}"
    folders = [f"{root}/{i}" for i in range(len(names))]
    written = [
        inputs[n].map_batches(
            _write_pieces, fn_args=(by[n], partitions, folders[i]), batch_format="pyarrow", batch_size=None
        )
        for i, n in enumerate(names)
    ]
    (written[0].union(*written[1:]) if len(written) > 1 else written[0]).materialize()  # map side done
    reduce, extra = (_reduce, ()) if stream is None else (_reduce_streaming, (stream, STREAM_BYTES))
    return ray.data.range(partitions, override_num_blocks=partitions).map_batches(
        reduce,
        fn_args=(folders, fn, names, arrow_schemas, partitions, args, *extra),
        batch_size=1,
        batch_format="pyarrow",
    )


def _single(fn, names, schemas, counts, args, *blocks) -> pa.Table:
    """Ray task body of a one-partition cogroup: every block of every input, then ``fn``."""
    tables, at = [], 0
    for c in counts:
        tables.append(list(blocks[at : at + c]))
        at += c
    return _call(fn, names, schemas, tables, args)


def sum_counts(ds, key: str = "key", value: str = "n") -> dict[str, int]:
    """Sum a Ray dataset of small per-block count tables ``(key, n)`` on the driver: O(blocks × keys)."""
    import ray

    total: dict[str, int] = {}
    for ref in ds.to_arrow_refs():
        t = ray.get(ref)
        if t.num_rows == 0:
            continue  # (an empty block may come without columns)
        for k, n in zip(t.column(key).to_pylist(), t.column(value).to_pylist(), strict=True):
            total[k] = total.get(k, 0) + n
    return dict(sorted(total.items()))


def _table_sums(table: pa.Table) -> dict[str, int]:
    total: dict[str, int] = {}
    if table.num_rows:
        for k, n in zip(table.column("key").to_pylist(), table.column("n").to_pylist(), strict=True):
            total[k] = total.get(k, 0) + n
    return dict(sorted(total.items()))


def _rows_of(table: pa.Table) -> pa.Table:
    return pa.table({"key": ["rows"], "n": pa.array([table.num_rows], pa.int64())})


class RayDatasets:
    """Steps over Ray datasets: ``map`` per batch on workers, :func:`cogroup` across them."""

    partitioned = True

    def map(self, ds, fn, *args):
        """``fn(batch, *args)`` over every batch (lazy)."""
        return ds.map_batches(fn, fn_args=args, batch_format="pyarrow")

    def cogroup(self, inputs, by, partitions, fn, args=(), schemas=None, stream=None):
        """:func:`cogroup` on Ray."""
        return cogroup(inputs, by, partitions, fn, args, schemas, stream)

    def union(self, first, *rest):
        """All rows of the datasets."""
        return first.union(*rest) if rest else first

    def keep(self, ds):
        """Compute ``ds`` once, for several uses."""
        return ds.materialize()

    def sums(self, ds) -> dict[str, int]:
        """Sum a dataset of ``(key, n)`` count tables."""
        return sum_counts(ds)

    def count(self, ds) -> int:
        """Rows of ``ds``."""
        return sum_counts(ds.map_batches(_rows_of, batch_format="pyarrow")).get("rows", 0)


class LocalTables:
    """The same steps in one process over Arrow tables: for small inputs, where a whole pipeline
    of steps runs as one Ray task (one partition), and for tests (``partitioned``: the partitions
    the Ray run would use, one after another)."""

    def __init__(self, partitioned: bool = False) -> None:
        self.partitioned = partitioned

    def map(self, table, fn, *args):
        return fn(table, *args)

    def cogroup(self, inputs, by, partitions, fn, args=(), schemas=None, stream=None):
        return cogroup_local(inputs, by, partitions if self.partitioned else 1, fn, args)

    def union(self, first, *rest):
        tables = [first, *rest]
        return pa.concat_tables([t for t in tables if t.num_columns] or tables[:1])

    def keep(self, table):
        return table

    def sums(self, table) -> dict[str, int]:
        return _table_sums(table)

    def count(self, table) -> int:
        return table.num_rows


def cogroup_local(
    tables: dict[str, pa.Table],
    by: dict[str, str],
    partitions: int,
    fn: PartitionFn,
    args: Sequence[Any] = (),
) -> pa.Table:
    """:func:`cogroup` in this process over in-memory tables (same partitioning, same ``fn``)."""
    names = list(tables)
    outs = []
    parts = {n: partition_of(tables[n].column(by[n]).to_numpy(), partitions) for n in names}
    for p in range(partitions):
        split = [[tables[n].filter(pa.array(parts[n] == p))] for n in names]
        outs.append(_call(fn, names, [tables[n].schema for n in names], split, args))
    outs = [o for o in outs if o.num_rows] or outs[:1]
    return pa.concat_tables(outs)
