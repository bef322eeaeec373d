"""The one executor: runs a declared list of phases on Ray Data and owns everything around them.

A :class:`Phase` is a small class with a typed config that turns datasets into datasets
(``run(data, ctx) -> {output name: ray.data.Dataset}``); it never starts Ray, writes a
checkpoint, splits rejects or counts. The :class:`Executor` does, for every phase in order:

1. **resume**: the phase's fingerprint is a hash of its config chained to the previous phase's;
   when ``_work/<phase>/_SUCCESS`` holds the same fingerprint the phase is skipped and its
   outputs are read back from its checkpoint (see :mod:`mm1data.runners.workdir`);
2. **run** the phase and stream each output into its checkpoint (``_work/<phase>/<output>``);
3. **count** while writing (the same pass): rows kept, rejected per ``stream/stage/reason``, and
   the item rejects of kept docs (an output that declares a rejects folder carries the nullable
   ``reject`` struct);
4. **commit** the marker with the counts; later phases read the kept rows lazily.

After the last phase it writes ``rejects/<folder>/part-NNNNN.parquet`` in one co-partitioned
step (every rejected row of every phase, partitioned by a hash of the id and sorted, so any
number of workers writes the same bytes), ``stats.json``, and calls each phase's
:meth:`Phase.finish` (the build publishes ``manifest.json`` there, last). The driver holds only
counts: O(phases × outputs × reasons) numbers, and O(blocks) object references.

``mm1data ingest``, ``filter``, ``dedup``, ``build`` and ``plan`` run lists of the same phases.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from mm1data import __version__
from mm1data.io.fs import fsspec_fs
from mm1data.report import StageLog
from mm1data.runners.shuffle import RayDatasets, cogroup, hash64, partition_of, partitions_for, sum_counts
from mm1data.runners.workdir import WorkDir, fingerprint, select_rows
from mm1data.schemas import REJECT, STREAMS

STAT_STREAMS = (*STREAMS, "synthetic_caption")
"""Outputs whose rows are source records (or lines): stats.json counts read = kept + rejected."""
REJECTS_PER_PART = 100_000
"""Reject rows per ``rejects/<folder>/part-NNNNN.parquet`` file (the part count grows with the data)."""


@dataclass(frozen=True)
class Output:
    """An output of a phase: its name, the rejects folder its rejected rows go to when its rows
    carry a ``reject`` struct (``None``: a plain table), and its schema (for an empty output)."""

    name: str
    rejects: str | None = None
    schema: pa.Schema | None = None


def stream_output(name: str) -> Output:
    """The output of a record stream: its rejects go to ``rejects/<stream>``."""
    from mm1data.ingest.synthetic import SYNTHETIC_LINE
    from mm1data.schemas import STREAM_SCHEMAS

    return Output(name, name, STREAM_SCHEMAS.get(name, SYNTHETIC_LINE))


class Phase:
    """One step of a pipeline. Subclasses set ``name`` and ``outputs`` and implement :meth:`run`."""

    name: ClassVar[str] = "phase"
    outputs: tuple[Output, ...] = ()
    checkpoint: ClassVar[bool] = True  # False: recomputed on every run (cheap readers)
    keep: ClassVar[tuple[str, ...]] = ()  # folders of _work/<phase>/ a rerun keeps (its own resume state)

    def fingerprint(self) -> Any:
        """JSON-able config this phase's result depends on (chained to the previous phase's)."""
        return None

    def declare(self, data: Data) -> tuple[Output, ...]:
        """The outputs this phase makes given the data so far (default: :attr:`outputs`)."""
        return self.outputs

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        """Compute this phase's outputs (lazy Ray datasets) from earlier outputs in ``data``."""
        raise NotImplementedError

    def finish(self, ctx: Context, data: Data) -> None:
        """Called after rejects and ``stats.json`` are written (the build writes its manifest here)."""


@dataclass
class Context:
    """What a phase may use besides its inputs: the output location, the log, ``info`` (small
    JSON-able facts a phase reports, kept in its marker and merged into ``stats.json`` under the
    phase's name) and the fingerprints of the phases so far."""

    output: str
    work: WorkDir
    log: StageLog
    info: dict[str, dict] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> str:
        """The output URL without a trailing slash."""
        return self.output.rstrip("/")


@dataclass
class Stored:
    """Where an output lives and what it counted."""

    phase: str
    output: Output
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # "stream/stage/reason" -> rows
    items: dict[str, int] = field(default_factory=dict)  # item rejects of its kept docs, likewise
    work: WorkDir | None = None  # where the checkpoint is; None: held in memory (checkpoint=False)
    dataset: Any = None
    nbytes: int = 0  # Arrow bytes of the kept rows: partitions of payload are sized by it too

    def read(self, columns: list[str] | None = None, rows: str | None = None):
        """The stored rows (only ``columns``, if given; only the ``rows`` "kept" or "rejected", if
        given) as a lazy Ray dataset."""
        if self.work is not None:
            return self.work.read_dataset(self.phase, self.output.name, columns=columns, rows=rows)
        if rows is not None:
            return self.dataset.map_batches(select_rows, fn_args=(rows, columns), batch_format="pyarrow")
        return self.dataset.select_columns(columns) if columns else self.dataset

    def columns(self) -> list[str]:
        """The column names of the stored rows."""
        if self.work is None:
            return self.dataset.columns()
        return self.work.schema(self.phase, self.output.name).names

    def counts(self) -> dict:
        """The counts as kept in the phase's marker."""
        return {"kept": self.kept, "rejected": self.rejected, "items": self.items, "bytes": self.nbytes}


class Data:
    """The outputs of the phases run so far, by name (a later phase's output of the same name
    replaces an earlier one, e.g. a record stream after each curation phase)."""

    def __init__(self) -> None:
        self.outputs: dict[str, Stored] = {}
        self.history: list[Stored] = []

    def __contains__(self, name: str) -> bool:
        return name in self.outputs

    def add(self, stored: Stored) -> None:
        """Record a phase's output."""
        self.outputs[stored.output.name] = stored
        self.history.append(stored)

    def rows(self, name: str) -> int:
        """Kept rows of output ``name``."""
        return self.outputs[name].kept

    def nbytes(self, name: str) -> int:
        """Arrow bytes of the kept rows of output ``name`` (0 when not counted)."""
        return self.outputs[name].nbytes

    def kept(self, name: str, columns: list[str] | None = None):
        """The rows of output ``name`` whose ``reject`` is null (all rows of a plain output)."""
        stored = self.outputs[name]
        return stored.read(columns, rows=None if stored.output.rejects is None else "kept")


# --- counts ---------------------------------------------------------------------------------------


def count_rows(ds) -> int:
    """Rows of a Ray dataset (one pass; per-block counts summed)."""
    return RayDatasets().count(ds)


def _reject_counts(streams, stages, reasons) -> tuple[list[str], list[int]]:
    """("stream/stage/reason", n) counts of three parallel arrays."""
    if len(stages) == 0:
        return [], []
    keys = pc.binary_join_element_wise(streams, stages, reasons, "/")
    c = pa.table({"key": keys}).group_by("key", use_threads=False).aggregate([("key", "count")])
    return c.column("key").to_pylist(), c.column("key_count").to_pylist()


def _outcome_counts(table: pa.Table, name: str, stream: str | None, rejects: bool) -> pa.Table:
    """Counts of one output's batch, keys prefixed ``name|``: ``rows``; with a ``reject`` column
    also ``kept``, ``stream/stage/reason`` of rejected rows and ``items:<stream>_item/stage/reason``
    of the item rejects of kept docs."""
    keys, ns = [f"{name}|rows", f"{name}|bytes"], [table.num_rows, table.nbytes]
    if rejects and table.num_rows:
        rej = table.column("reject")
        live = pc.is_null(rej)
        n_live = int(pc.sum(live.cast(pa.int64())).as_py() or 0)
        keys.append(f"{name}|kept")
        ns.append(n_live)
        if n_live < table.num_rows:  # the bytes of the kept rows only
            ns[1] = table.filter(live).nbytes
        if n_live < table.num_rows:
            dead = pc.invert(live)
            r = rej.filter(dead)
            streams = table.column("stream").filter(dead) if stream is None else pa.array([stream] * len(r))
            k, n = _reject_counts(streams, pc.struct_field(r, "stage"), pc.struct_field(r, "reason"))
            keys += [f"{name}|{x}" for x in k]
            ns += n
        if "item_rejects" in table.column_names and n_live:
            items = pc.list_flatten(table.column("item_rejects").filter(live))
            kinds = pa.array([f"{stream}_item"] * len(items))
            k, n = _reject_counts(kinds, pc.struct_field(items, "stage"), pc.struct_field(items, "reason"))
            keys += [f"{name}|items:{x}" for x in k]
            ns += n
    return pa.table({"key": keys, "n": pa.array(ns, pa.int64())})


def _fill_counts(stored: list[Stored], counts: dict[str, int]) -> None:
    """Set the counts of a phase's outputs from the sums of their ``name|...`` count keys."""
    for st in stored:
        mine = {k.split("|", 1)[1]: v for k, v in counts.items() if k.split("|", 1)[0] == st.output.name}
        rows = mine.pop("rows", 0)
        st.nbytes = mine.pop("bytes", 0)
        st.kept = mine.pop("kept", 0) if st.output.rejects is not None else rows
        st.items = {k[len("items:") :]: v for k, v in mine.items() if k.startswith("items:")}
        st.rejected = {k: v for k, v in mine.items() if not k.startswith("items:")}


# --- rejects --------------------------------------------------------------------------------------


def to_rejects(table: pa.Table, stream: str | None, kept_items_only: bool = False) -> pa.Table:
    """:data:`~mm1data.schemas.REJECT` rows of a batch: its rejected rows and the ``item_rejects``
    of its docs (ids ``<doc id>#<n>``, stream ``<stream>_item``). ``stream`` None takes each row's
    ``stream`` column; a ``part`` column (examples) makes ids ``<id>#<part>`` for parts > 0.
    ``kept_items_only``: only the item rejects of live rows (the last checkpoint of a stream)."""
    rows = []
    ids = table.column("id").to_pylist()
    lineages = table.column("lineage").to_pylist() if "lineage" in table.column_names else [None] * len(ids)
    streams = table.column("stream").to_pylist() if stream is None else [stream] * len(ids)
    parts = table.column("part").to_pylist() if "part" in table.column_names else [0] * len(ids)
    rejects = table.column("reject").to_pylist()
    for i, rej in enumerate(rejects):
        if rej is not None and not kept_items_only:
            rid = ids[i] if not parts[i] else f"{ids[i]}#{parts[i]}"
            rows.append({"id": rid, "stream": streams[i], "lineage": lineages[i], **rej})
    if "item_rejects" in table.column_names:
        for i, items in enumerate(table.column("item_rejects").to_pylist()):
            if kept_items_only == (rejects[i] is None):
                for n, rej in enumerate(items or []):
                    rows.append(
                        {"id": f"{ids[i]}#{n}", "stream": f"{streams[i]}_item", "lineage": lineages[i], **rej}
                    )
    return pa.Table.from_pylist(rows, schema=REJECT)


def _folder_rejects(table: pa.Table, stream: str | None, kept_items_only: bool, folder: str) -> pa.Table:
    """REJECT rows of a batch, tagged with their rejects folder and a hash of the id (their part)."""
    rows = to_rejects(table, stream, kept_items_only)
    keys = hash64(rows.column("id").to_pylist())
    folders = pa.array([folder] * rows.num_rows, pa.string())
    return rows.append_column("_folder", folders).append_column("_k", pa.array(keys, pa.int64()))


def rejects_of(stored: Stored, kept_items_only: bool = False):
    """The tagged REJECT rows of one stored output (its rejected rows, or the item rejects of
    its kept docs)."""
    stream = stored.output.name if stored.output.name in STAT_STREAMS else None
    names = stored.columns()
    cols = ["id", "reject", "lineage"] + (["stream"] if stream is None else [])
    cols += [c for c in ("item_rejects", "part") if c in names]
    ds = stored.read(cols, rows="kept" if kept_items_only else "rejected")
    args = (stream, kept_items_only, stored.output.rejects)
    return ds.map_batches(_folder_rejects, fn_args=args, batch_format="pyarrow")


REJECT_ORDER = [
    ("id", "ascending"),
    ("stream", "ascending"),
    ("stage", "ascending"),
    ("reason", "ascending"),
    ("detail", "ascending"),
]
TAGGED = REJECT.append(pa.field("_folder", pa.string())).append(pa.field("_k", pa.int64()))


def _write_reject_part(parts: dict[str, pa.Table], url: str, n_parts: int) -> pa.Table:
    """cogroup fn: write this partition's rejects as ``<folder>/part-NNNNN.parquet`` per folder,
    each sorted; returns its counts per ``folder|stream/stage/reason``."""
    import pyarrow.parquet as pq

    table = parts["r"]
    keys, ns = [], []
    if table.num_rows == 0:
        return pa.table({"key": pa.array([], pa.string()), "n": pa.array([], pa.int64())})
    p = int(partition_of(table.column("_k").to_numpy()[:1], n_parts)[0])
    for folder in sorted(set(table.column("_folder").to_pylist())):
        rows = table.filter(pc.equal(table.column("_folder"), folder)).drop_columns(["_k", "_folder"])
        lineage = rows.column("lineage")
        order = pa.table(
            {
                **{c: rows.column(c) for c, _ in REJECT_ORDER},
                "source": pc.struct_field(lineage, "source"),
                "offset": pc.struct_field(lineage, "offset"),
            }
        )
        sort = [*REJECT_ORDER, ("source", "ascending"), ("offset", "ascending")]
        rows = rows.take(pc.sort_indices(order, sort)).cast(REJECT)
        fs, path = fsspec_fs(f"{url}/{folder}/part-{p:05d}.parquet")
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            pq.write_table(rows, f)
        k, n = _reject_counts(rows.column("stream"), rows.column("stage"), rows.column("reason"))
        keys += [f"{folder}|{x}" for x in k]
        ns += n
    return pa.table({"key": pa.array(keys, pa.string()), "n": pa.array(ns, pa.int64())})


def _write_empty_rejects(url: str) -> None:
    import pyarrow.parquet as pq

    fs, path = fsspec_fs(f"{url}/part-00000.parquet")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(REJECT.empty_table(), f)


def write_rejects(datasets: list, url: str, total: int) -> dict[str, dict[str, int]]:
    """Write tagged REJECT datasets as ``url/<folder>/part-NNNNN.parquet``: rows partitioned by a
    hash of their id into about ``total / REJECTS_PER_PART`` parts, each part sorted, so the bytes
    do not depend on the workers. Returns counts per folder and ``stream/stage/reason``."""
    if not datasets or total == 0:
        return {}
    ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    parts = partitions_for(total, REJECTS_PER_PART)
    written = cogroup({"r": ds}, {"r": "_k"}, parts, _write_reject_part, (url, parts), {"r": TAGGED})
    out: dict[str, dict[str, int]] = {}
    for key, n in sum_counts(written).items():
        folder, rest = key.split("|", 1)
        out.setdefault(folder, {})[rest] = n
    return out


# --- the executor -------------------------------------------------------------------------------


@dataclass
class Result:
    """What a run produced: the data by name, the stats written, and seconds per phase."""

    data: Data
    stats: dict
    timings: dict[str, float]


def resident_mib() -> int:
    """This process's resident memory in MiB (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) >> 10 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


class Executor:
    """Runs phases with checkpoints, rejects, stats and progress (see the module docstring)."""

    def __init__(
        self,
        output: str,
        ray_address: str | None = None,
        num_cpus: int | None = None,
        log: StageLog | None = None,
        restart: bool = False,
    ) -> None:
        self.output = output if "://" in output else os.path.abspath(output)  # workers have another cwd
        self.ray_address = ray_address
        self.num_cpus = num_cpus
        self.log = log or StageLog(quiet=True)
        self.restart = restart

    def run(
        self, phases: Iterable[Phase], base: Any = "", amend: Callable[[dict, Data], dict] | None = None
    ) -> Result:
        """Run ``phases`` in order (fingerprints chained from ``base``); returns the result after
        writing rejects, ``stats.json`` (``amend(stats, data)`` may add to it) and calling every
        phase's :meth:`Phase.finish`."""
        from mm1data.runners.ray_session import ray_session, release_memory
        from mm1data.runners.shuffle import shuffle_files

        phases = list(phases)
        t0 = time.perf_counter()
        retract(self.output, self.restart)
        ctx = Context(self.output, WorkDir(self.output), self.log)
        data = Data()
        timings: dict[str, float] = {}
        rss: dict[str, int] = {}  # the driver's resident MiB after each phase
        with (
            ray_session(self.ray_address, self.num_cpus, quiet=not self.log.show_progress),
            shuffle_files(ctx.work.url("_shuffle")),
        ):
            timings["ray_start"] = time.perf_counter() - t0
            fp = fingerprint(__version__, base)
            for phase in phases:
                t = time.perf_counter()
                fp = fingerprint(fp, phase.name, phase.fingerprint())
                ctx.fingerprints[phase.name] = fp
                self._run_phase(phase, fp, data, ctx)
                timings[phase.name] = time.perf_counter() - t
                gc.collect()  # (a phase's datasets and their block metadata, then their pages)
                release_memory()
                rss[phase.name] = resident_mib()
            t = time.perf_counter()
            rejects = self._write_rejects(data, ctx)
            timings["rejects"] = time.perf_counter() - t
            rss["rejects"] = resident_mib()
            stats = self._stats(data, ctx, rejects, timings, t0)
            stats["driver_rss_mib"] = rss
            if amend is not None:
                stats = amend(stats, data)
            fs, path = fsspec_fs(ctx.root)
            fs.pipe_file(f"{path}/stats.json", (json.dumps(stats, indent=2) + "\n").encode())
            for phase in phases:
                phase.finish(ctx, data)
        return Result(data, stats, timings)

    def _run_phase(self, phase: Phase, fp: str, data: Data, ctx: Context) -> None:
        work = ctx.work
        outputs = phase.declare(data)
        if phase.checkpoint and work.is_done(phase.name, fp):
            marker = work.marker(phase.name) or {}
            ctx.info[phase.name] = marker.get("info", {})
            for out in outputs:
                c = marker["outputs"][out.name]
                data.add(
                    Stored(
                        phase.name, out, c["kept"], c["rejected"], c["items"], work, nbytes=c.get("bytes", 0)
                    )
                )
            self.log.resumed(phase.name, {o.name: data.rows(o.name) for o in outputs})
            return
        t = time.perf_counter()
        if phase.checkpoint:
            work.reset(phase.name, keep=phase.keep)
        datasets = phase.run(data, ctx)
        stored, counted = [], []
        for out in outputs:
            stream = out.name if out.name in STAT_STREAMS else None
            args = (out.name, stream, out.rejects is not None)
            if phase.checkpoint:
                counted.append(
                    work.write_dataset(
                        datasets[out.name],
                        phase.name,
                        out.name,
                        schema=out.schema,
                        count=_outcome_counts,
                        args=args,
                    )
                )
                stored.append(Stored(phase.name, out, work=work))
            else:
                ds = datasets[out.name].materialize()
                counted.append(ds.map_batches(_outcome_counts, fn_args=args, batch_format="pyarrow"))
                stored.append(Stored(phase.name, out, dataset=ds))
        _fill_counts(stored, sum_counts(RayDatasets().union(*counted)) if counted else {})
        for st in stored:
            data.add(st)
        if phase.checkpoint:
            counts = {st.output.name: st.counts() for st in stored}
            work.commit(phase.name, fp, {"outputs": counts, "info": ctx.info.get(phase.name, {})})
        self.log.stage(phase.name, time.perf_counter() - t, **{o.name: data.rows(o.name) for o in outputs})

    @staticmethod
    def _write_rejects(data: Data, ctx: Context) -> dict[str, dict[str, int]]:
        """Every rejected row of every phase, and the item rejects of the docs kept at the end."""
        parts, total = [], 0
        for stored in data.history:
            if stored.output.rejects is None:
                continue
            if stored.rejected:
                parts.append(rejects_of(stored))
                total += sum(stored.rejected.values())
            if data.outputs.get(stored.output.name) is stored and stored.items:
                parts.append(rejects_of(stored, kept_items_only=True))
                total += sum(stored.items.values())
        fs, path = fsspec_fs(ctx.root)
        if fs.exists(f"{path}/rejects"):
            fs.rm(f"{path}/rejects", recursive=True)
        counts = write_rejects(parts, f"{ctx.root}/rejects", total)
        for folder in {st.output.rejects for st in data.history if st.output.rejects} - set(counts):
            _write_empty_rejects(f"{ctx.root}/rejects/{folder}")  # every folder exists, even with no rows
        return counts

    @staticmethod
    def _stats(
        data: Data, ctx: Context, rejects: dict[str, dict[str, int]], timings: dict, t0: float
    ) -> dict:
        streams = {}
        for name in STAT_STREAMS:
            if name not in data:
                continue
            by_reason: Counter = Counter()
            items: Counter = Counter()
            for key, n in rejects.get(name, {}).items():
                stream, rest = key.split("/", 1)
                (items if stream.endswith("_item") else by_reason)[rest] += n
            kept = data.rows(name)
            rejected = sum(by_reason.values())
            streams[name] = {
                "read": kept + rejected,
                "kept": kept,
                "rejected": rejected,
                "rejected_by_reason": dict(sorted(by_reason.items())),
                "item_rejects_by_reason": dict(sorted(items.items())),
            }
        return {
            "output": ctx.output,
            "streams": streams,
            "rejects": {k: v for k, v in rejects.items() if k not in STAT_STREAMS},
            **{k: v for k, v in ctx.info.items() if v},
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "wall_s": round(time.perf_counter() - t0, 3),
        }


def retract(output: str, restart: bool) -> None:
    """Make ``output`` not look complete before anything changes: ``manifest.json`` goes first, then
    ``.nv-meta`` (Energon's sign of a complete dataset). With ``restart`` every earlier file goes too
    (shards, rejects, stats and ``_work``)."""
    fs, root = fsspec_fs(output)
    if fs.exists(f"{root}/manifest.json"):
        fs.rm(f"{root}/manifest.json")
    if fs.exists(f"{root}/.nv-meta"):
        fs.rm(f"{root}/.nv-meta", recursive=True)
    if restart:
        for p in fs.glob(f"{root}/shard-*"):
            fs.rm(p)
        for name in ("rejects", "stats.json", "_work"):
            if fs.exists(f"{root}/{name}"):
                fs.rm(f"{root}/{name}", recursive=True)
    fs.makedirs(root, exist_ok=True)
