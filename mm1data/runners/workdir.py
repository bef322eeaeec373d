"""Resumable stages: per-stage and per-shard completion markers under ``<output>/_work``.

Datatrove-style: a stage's output is written first and its ``_SUCCESS`` marker last, so a run
killed at any moment (SIGKILL included) leaves either a complete stage with its marker or a
partial one without it. A marker records the stage's *fingerprint*: a hash of the upstream
fingerprint and of the config that stage reads. On a rerun a stage whose marker matches is read
back instead of recomputed; a missing or stale marker redoes that stage and, through the chained
fingerprints, everything downstream of it, and nothing upstream.

Layout (``<output>/_work``)::

    <phase>/<output>/*.parquet   <phase>/_SUCCESS    (one folder per phase, see runners/executor.py)
    shards/shard-PPPPP-SSSSS.json                    (one marker per written shard tar)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pyarrow as pa

from mm1data.io.fs import fsspec_fs, is_local
from mm1data.runners.ray_session import release_memory

MARKER = "_SUCCESS"


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable ``parts`` (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class WorkDir:
    """The ``_work`` folder of one build output (local or ``s3://``)."""

    def __init__(self, output: str) -> None:
        self.root = f"{output.rstrip('/')}/_work"
        self.fs, self.path = fsspec_fs(self.root)

    def url(self, *names: str) -> str:
        """The URL of ``names`` inside the work folder."""
        return "/".join([self.root, *names])

    def _local(self, *names: str) -> str:
        return "/".join([self.path, *names])

    def marker(self, stage: str) -> dict | None:
        """The marker of ``stage``, or None when the stage never completed."""
        return self._read_json(self._local(stage, MARKER))

    def _read_json(self, path: str) -> dict | None:
        try:
            with self.fs.open(path, "r") as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_done(self, stage: str, fp: str) -> bool:
        """Whether ``stage`` completed with fingerprint ``fp``."""
        m = self.marker(stage)
        return m is not None and m.get("fingerprint") == fp

    def reset(self, stage: str, keep: tuple[str, ...] = ()) -> None:
        """Remove a stage's (partial or stale) output and marker, except the folders named in ``keep``
        (state a stage resumes from itself, such as the download phase's per-URL results)."""
        path = self._local(stage)
        if not self.fs.exists(path):
            return
        if not keep:
            self.fs.rm(path, recursive=True)
            return
        for p in self.fs.ls(path, detail=False):
            if p.rstrip("/").rsplit("/", 1)[-1] not in keep:
                self.fs.rm(p, recursive=True)

    def commit(self, stage: str, fp: str, info: dict | None = None) -> None:
        """Write the stage's marker (whole or not at all): from now on its output counts as complete."""
        put_whole(
            self.fs,
            self._local(stage, MARKER),
            json.dumps({"fingerprint": fp, **(info or {})}, indent=1).encode(),
        )

    def write_dataset(
        self, ds: Any, *names: str, schema: pa.Schema, count: Callable[..., pa.Table], args: tuple = ()
    ) -> Any:
        """Stream Ray dataset ``ds`` into Parquet files under ``names``, one per block, as it is
        computed (no materialization first). Returns the lazy dataset of ``count(block, *args)``
        per block: executing it writes the files, so writing and counting take one pass.

        A schema-only file (``schema``) keeps the columns of an output that has no rows."""
        import pyarrow.parquet as pq

        local = self._local(*names)
        self.fs.makedirs(local, exist_ok=True)
        with self.fs.open(f"{local}/_schema.parquet", "wb") as f:
            pq.write_table(schema.empty_table(), f)
        return ds.map_batches(
            write_block, fn_args=(self.url(*names), count, args), batch_size=None, batch_format="pyarrow"
        )

    def schema(self, *names: str) -> pa.Schema:
        """The schema of the dataset stored under ``names``."""
        import pyarrow.parquet as pq

        with self.fs.open(self._local(*names, "_schema.parquet"), "rb") as f:
            return pq.read_schema(f)

    def read_dataset(self, *names: str, columns: list[str] | None = None, rows: str | None = None) -> Any:
        """The Ray dataset stored by :meth:`write_dataset` under ``names`` (only ``columns``, if
        given; only the ``rows`` "kept" or "rejected", if given: :func:`read_files`): one read
        task per :data:`READ_TASK_BYTES` of files, each a plain ``pyarrow.parquet`` read."""
        import ray.data

        local = self._local(*names)
        listed = sorted((p["name"], p["size"]) for p in self.fs.ls(local, detail=True))
        files = [(p, n) for p, n in listed if p.endswith(".parquet") and not p.endswith("_schema.parquet")]
        groups = read_groups(files or [(f"{local}/_schema.parquet", 0)], READ_TASK_BYTES)
        blocks = [pa.table({"path": [self.url(*names, p.rsplit("/", 1)[-1]) for p in g]}) for g in groups]
        ds = ray.data.from_arrow(blocks)
        return ds.map_batches(read_files, fn_args=(columns, rows), batch_size=None, batch_format="pyarrow")

    def commit_shard(self, name: str, row: dict, fp: str) -> None:
        """Mark shard tar ``name`` (already written whole) as done for the plan ``fp``."""
        put_whole(
            self.fs, self._local("shards", f"{name}.json"), json.dumps({**row, "fingerprint": fp}).encode()
        )

    def shard_marker(self, name: str) -> dict | None:
        """The marker of shard tar ``name`` (its stats row and plan fingerprint), if written."""
        return self._read_json(self._local("shards", f"{name}.json"))


def put_whole(fs: Any, path: str, data: bytes | memoryview) -> None:
    """Write ``data`` at ``path`` so that it appears whole or not at all: written beside and
    renamed on a local disk, one PUT on an object store."""
    if not is_local(fs):
        fs.pipe_file(path, bytes(data))
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(f"{path}.partial", data)
    fs.mv(f"{path}.partial", path)


def _leaves(typ: pa.DataType, path: str) -> Iterator[tuple[str, pa.DataType]]:
    if pa.types.is_struct(typ):
        for f in typ:
            yield from _leaves(f.type, f"{path}.{f.name}")
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
        yield from _leaves(typ.value_type, f"{path}.list.element")
    else:
        yield path, typ


def parquet_options(schema: pa.Schema) -> dict:
    """``pq.write_table`` options for a checkpoint: binary columns (encoded images, also inside
    items) stored plain and uncompressed, since JPEG/PNG/WebP bytes neither compress nor repeat
    (trying costs more than the write and makes reads several times slower); others as default."""
    leaves = [leaf for f in schema for leaf in _leaves(f.type, f.name)]
    binary = {p for p, t in leaves if pa.types.is_binary(t) or pa.types.is_large_binary(t)}
    if not binary:
        return {}
    return {
        "compression": {p: ("none" if p in binary else "snappy") for p, _ in leaves},
        "use_dictionary": [p for p, _ in leaves if p not in binary],
    }


ROW_GROUP_BYTES = 16 * 1024**2
"""Arrow bytes per row group of a checkpoint file: later phases read a file a row group at a time."""


def write_block(table: pa.Table, url: str, count: Callable[..., pa.Table], args: tuple) -> pa.Table:
    """Ray Data UDF: write one block as ``url/<hash of its bytes>.parquet`` (nothing for an empty
    block) and return ``count(block, *args)``. The name comes from the content, so a task Ray
    retries after a lost worker rewrites the same file instead of adding a second copy; the file
    appears whole or not at all (:func:`content_named`)."""
    import pyarrow.parquet as pq

    if table.num_rows:
        per_group = max(1, table.num_rows * ROW_GROUP_BYTES // max(1, table.nbytes))
        fs, folder = fsspec_fs(url)
        with content_named(fs, folder, lambda digest: f"{digest}.parquet") as sink:
            pq.write_table(table, sink, row_group_size=per_group, **parquet_options(table.schema))
        release_memory()  # the writer's buffers, before the task's next block
    return count(table, *args)


class _Hashing(io.RawIOBase):
    """A binary sink that passes what it is given on to ``raw`` and hashes it (blake2b)."""

    def __init__(self, raw: BinaryIO, digest_size: int) -> None:
        super().__init__()
        self.raw, self.digest, self.size = raw, hashlib.blake2b(digest_size=digest_size), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # (any bytes-like object)
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size


@contextlib.contextmanager
def content_named(
    fs: Any, folder: str, name: Callable[[str], str], digest_size: int = 16
) -> Iterator[BinaryIO]:
    """A sink for one file under ``folder``, named ``name(hex blake2b of its bytes)`` once it is
    written, that appears whole or not at all: on a local disk it goes to a file beside as it is
    written and is renamed (the task never holds its bytes), on an object store it is one PUT."""
    local = is_local(fs)
    partial = f"{folder}/{uuid.uuid4().hex}.partial"
    if local:
        fs.makedirs(folder, exist_ok=True)
    with open(partial, "wb") if local else io.BytesIO() as raw:
        sink = _Hashing(raw, digest_size)
        yield sink
        path = f"{folder}/{name(sink.digest.hexdigest())}"
        if not local:
            put_whole(fs, path, raw.getbuffer())
    if local:
        os.replace(partial, path)


READ_TASK_BYTES = 64 * 1024**2
"""File bytes a checkpoint read task takes: several small files or one large one, so read tasks
(and the blocks and task records Ray keeps for them) grow with the bytes, not with the files."""


def read_groups(files: list[tuple[str, int]], target: int) -> list[list[str]]:
    """``(path, size)`` in order, cut into runs of at most ``target`` bytes (a larger file alone)."""
    groups: list[list[str]] = []
    size = 0
    for path, n in files:
        if not groups or (size + n > target and size):
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += n
    return groups


def read_files(batch: pa.Table, columns: list[str] | None, rows: str | None = None) -> Iterator[pa.Table]:
    """Ray Data UDF: the rows of the Parquet files named in ``batch`` (only ``columns``, if given),
    a row group (about :data:`ROW_GROUP_BYTES`) at a time, so a reader holds one row group.
    ``rows="kept"`` or ``"rejected"`` keeps only the rows whose ``reject`` is null or set, chosen
    as each row group is read (:func:`select_rows`): the rows left out are never copied."""
    import pyarrow.parquet as pq

    read = columns if rows is None or columns is None or "reject" in columns else [*columns, "reject"]
    for url in batch.column("path").to_pylist():
        fs, path = fsspec_fs(url)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for i in range(pf.num_row_groups):
                group = pf.read_row_group(i, columns=read)
                yield group if rows is None else select_rows(group, rows, columns)


def select_rows(table: pa.Table, rows: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of ``table`` whose ``reject`` is null (``rows="kept"``) or set (``"rejected"``),
    with only ``columns`` if given."""
    import pyarrow.compute as pc

    test = {"kept": pc.is_null, "rejected": pc.is_valid}[rows]
    chosen = table.filter(test(table.column("reject")))
    return chosen if columns is None else chosen.select(columns)
