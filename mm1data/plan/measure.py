"""What ``mm1data plan`` measures on its sample: the measure phase, and CPU time per phase.

:class:`MeasurePhase` runs after the build's plan phase and reduces the sample's checkpoints to
small counts (in ``ctx.info["measure"]``, so in ``stats.json``), all summed from per-block count
tables or per-partition tasks (nothing per record reaches the driver):

- ``funnel``: records per ``stream, source file, phase, outcome`` (``live`` or ``stage/reason``);
- ``examples``: per example stream and source file, examples, tokens, images and image bytes;
- ``records``: per record stream, records with examples and the sums of their tokens and
  examples and of the squares (the variance of the projected totals);
- ``histogram``: examples per ``(example stream, tokens, images)``: bounded by the layout (at
  most ``seq_len × max_images`` cells per stream), whatever the size of the data;
- ``dedup``: per dedup round (``text``: records of the text kinds; ``image``: caption pairs and
  image items) the sampled duplicate clusters' sums: clusters, removed members, copies within
  one record, and pairs and triples of the distinct records in each cluster.

:class:`CpuMeter` samples the CPU time (user + system) of this process and of the Ray worker
processes under it (``ray::`` process titles) every 0.2 s; :class:`MeteredLog` reads it as each
phase ends, so each phase gets the CPU seconds spent while it ran.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.report import StageLog
from mm1data.runners.executor import Context, Data, Phase
from mm1data.runners.shuffle import cogroup, hash64, partitions_for, sum_counts
from mm1data.schemas import STREAMS

DUPLICATE_REASONS = ("exact_duplicate", "near_duplicate")
ROUND_OF_RECORD = {"caption": "image", "interleaved": "text", "text": "text"}
"""The dedup round that removes a record of each stream (image items of docs: ``image``)."""


def record_stream(example_stream: str) -> str:
    """The record stream an example stream comes from (synthetic captions come from caption pairs)."""
    return "caption" if example_stream == "synthetic_caption" else example_stream


def _counts(keys: list[str], values: list[int]) -> pa.Table:
    return pa.table({"key": pa.array(keys, pa.string()), "n": pa.array(values, pa.int64())})


def _group_sum(table: pa.Table, by: list[str], values: list[str]) -> pa.Table:
    aggs = [(v, "sum") for v in values] if values else [(by[0], "count")]
    return table.group_by(by, use_threads=False).aggregate(aggs)


def funnel_counts(table: pa.Table, stream: str, phase: str) -> pa.Table:
    """``funnel\\tstream\\tsource\\tphase\\toutcome`` counts of one stored batch of a record stream."""
    if table.num_rows == 0:
        return _counts([], [])
    rej = table.column("reject")
    outcome = pc.if_else(
        pc.is_null(rej),
        pa.scalar("live"),
        pc.binary_join_element_wise(pc.struct_field(rej, "stage"), pc.struct_field(rej, "reason"), "/"),
    )
    t = pa.table({"source": pc.struct_field(table.column("lineage"), "source"), "outcome": outcome})
    g = _group_sum(t, ["source", "outcome"], [])
    keys = [
        f"funnel\t{stream}\t{s}\t{phase}\t{o}"
        for s, o in zip(g.column("source").to_pylist(), g.column("outcome").to_pylist(), strict=True)
    ]
    return _counts(keys, g.column("source_count").to_pylist())


def example_counts(table: pa.Table) -> pa.Table:
    """Counts of one batch of kept examples: ``ex`` (per stream and source file), ``rec`` (per
    record: sums and squares, records grouped within the batch), ``hist`` and ``hbytes`` (per
    ``stream, tokens, images``)."""
    if table.num_rows == 0:
        return _counts([], [])
    keys: list[str] = []
    values: list[int] = []
    t = pa.table(
        {
            "stream": table.column("stream"),
            "source": pc.struct_field(table.column("lineage"), "source"),
            "id": table.column("id"),
            "tokens": table.column("n_tokens").cast(pa.int64()),
            "images": table.column("n_images").cast(pa.int64()),
            "bytes": table.column("image_bytes").cast(pa.int64()),
            "one": pa.array(np.ones(table.num_rows, np.int64)),
        }
    )
    g = _group_sum(t, ["stream", "source"], ["one", "tokens", "images", "bytes"])
    for row in g.to_pylist():
        for name in ("one", "tokens", "images", "bytes"):
            label = "examples" if name == "one" else name
            keys.append(f"ex\t{row['stream']}\t{row['source']}\t{label}")
            values.append(int(row[f"{name}_sum"]))
    rs = pa.array([record_stream(s) for s in t.column("stream").to_pylist()], pa.string())
    per_record = _group_sum(t.append_column("rstream", rs), ["rstream", "source", "id"], ["tokens", "one"])
    streams = np.array(per_record.column("rstream").to_pylist(), dtype=object)
    tok = per_record.column("tokens_sum").to_numpy()
    ex = per_record.column("one_sum").to_numpy()
    for s in sorted(set(streams.tolist())):
        m = streams == s
        for name, v in (
            ("records", int(m.sum())),
            ("t", int(tok[m].sum())),
            ("t2", int((tok[m] ** 2).sum())),
            ("e", int(ex[m].sum())),
            ("e2", int((ex[m] ** 2).sum())),
        ):
            keys.append(f"rec\t{s}\t{name}")
            values.append(v)
    h = _group_sum(t, ["stream", "tokens", "images"], ["one", "bytes"])
    for row in h.to_pylist():
        cell = f"{row['stream']}\t{row['tokens']}\t{row['images']}"
        keys += [f"hist\t{cell}", f"hbytes\t{cell}"]
        values += [int(row["one_sum"]), int(row["bytes_sum"])]
    return _counts(keys, values)


LINK = pa.schema(
    [("k", pa.int64()), ("round", pa.string()), ("survivor", pa.string()), ("record", pa.string())]
)


def record_of(member: str) -> str:
    """The record (caption pair or doc id) a removed member or a survivor belongs to."""
    return member.split("#", 1)[0]


def duplicate_links(table: pa.Table, stream: str) -> pa.Table:
    """One :data:`LINK` row per duplicate removed by dedup in a batch of a stream's dedup output
    (a removed record, or a removed image item of a doc): its round, its survivor and its record."""
    rows: list[tuple[str, str, str]] = []
    ids = table.column("id").to_pylist()
    for rid, r in zip(ids, table.column("reject").to_pylist(), strict=True):
        if r is not None and r["stage"] == "dedup" and r["reason"] in DUPLICATE_REASONS:
            rows.append((ROUND_OF_RECORD[stream], r["duplicate_of"] or "", rid))
    if "item_rejects" in table.column_names:
        for rid, items in zip(ids, table.column("item_rejects").to_pylist(), strict=True):
            for r in items or []:
                if r["stage"] == "dedup" and r["reason"] in DUPLICATE_REASONS:
                    rows.append(("image", r["duplicate_of"] or "", rid))
    keys = hash64([f"{a}\x1f{b}" for a, b, _ in rows])
    cols = list(zip(*rows, strict=True)) if rows else [(), (), ()]
    return pa.table([pa.array(keys, pa.int64()), *(pa.array(c, pa.string()) for c in cols)], schema=LINK)


def cluster_moments(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn (links keyed by survivor): per round, the sampled duplicate clusters (a survivor
    and the members removed as its duplicates: m members in r distinct records) as sums:
    ``clusters``, ``removed`` (Σ m − 1), ``within`` (Σ m − r: copies inside one record, which the
    sample draws together), ``pairs`` (Σ C(r, 2)) and ``triples`` (Σ C(r, 3)) of records."""
    t = parts["l"]
    if t.num_rows == 0:
        return _counts([], [])
    clusters: dict[tuple[str, str], list] = {}
    for rnd, surv, rec in zip(
        *(t.column(c).to_pylist() for c in ("round", "survivor", "record")), strict=True
    ):
        c = clusters.setdefault((rnd, surv), [0, {record_of(surv)}])
        c[0] += 1
        c[1].add(record_of(rec))
    sums: dict[str, int] = {}
    for (rnd, _), (removed, records) in clusters.items():
        m, r = removed + 1, len(records)
        for name, v in (
            ("clusters", 1),
            ("removed", m - 1),
            ("within", m - r),
            ("pairs", r * (r - 1) // 2),
            ("triples", r * (r - 1) * (r - 2) // 6),
        ):
            sums[f"{rnd}/{name}"] = sums.get(f"{rnd}/{name}", 0) + v
    return _counts(list(sums), list(sums.values()))


def nested(counts: dict[str, int], prefix: str) -> dict:
    """``prefix\\ta\\tb...`` count keys as nested dicts ``{a: {b: ... n}}``."""
    out: dict = {}
    for key, n in counts.items():
        parts = key.split("\t")
        if parts[0] != prefix:
            continue
        at = out
        for p in parts[1:-1]:
            at = at.setdefault(p, {})
        at[parts[-1]] = n
    return out


class MeasurePhase(Phase):
    """Reduce the sample's checkpoints to the counts the projection needs (module docstring)."""

    name = "measure"

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        import ray

        counted = []
        for stored in data.history:
            s = stored.output.name
            if s in STREAMS:
                counted.append(
                    stored.read(["lineage", "reject"]).map_batches(
                        funnel_counts, fn_args=(s, stored.phase), batch_format="pyarrow"
                    )
                )
        cols = ["stream", "id", "lineage", "n_tokens", "n_images", "image_bytes"]
        counted.append(data.kept("examples", cols).map_batches(example_counts, batch_format="pyarrow"))
        counts = sum_counts(counted[0].union(*counted[1:]))
        links = [
            data.outputs[s]
            .read([c for c in ("id", "reject", "item_rejects") if c in data.outputs[s].columns()])
            .map_batches(duplicate_links, fn_args=(s,), batch_format="pyarrow")
            for s in STREAMS
            if s in data
        ]
        n_links = sum(data_dedup_counts(data).values())
        parts = partitions_for(n_links)
        union = links[0].union(*links[1:]) if len(links) > 1 else links[0]
        moments = sum_counts(cogroup({"l": union}, {"l": "k"}, parts, cluster_moments, schemas={"l": LINK}))
        ctx.info[self.name] = {
            "funnel": nested(counts, "funnel"),
            "examples": nested(counts, "ex"),
            "records": nested(counts, "rec"),
            "histogram": nested(counts, "hist"),
            "histogram_bytes": nested(counts, "hbytes"),
            "dedup": moments,
            "cluster_cpus": int(ray.cluster_resources().get("CPU", 0)),
        }
        return {}


def data_dedup_counts(data: Data) -> dict[str, int]:
    """Records and items removed as duplicates in the sample, per ``stream/reason``."""
    out: dict[str, int] = {}
    for s in STREAMS:
        if s not in data:
            continue
        stored = data.outputs[s]
        for key, n in {**stored.rejected, **stored.items}.items():
            stage_reason = key.split("/", 1)[1]
            if stage_reason in (f"dedup/{r}" for r in DUPLICATE_REASONS):
                out[key] = out.get(key, 0) + n
    return out


# --- CPU time -------------------------------------------------------------------------------------


def _is_worker(proc: Any) -> bool:
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - a process that just ended
        return False
    return bool(cmd) and cmd[0].startswith("ray::")


class CpuMeter:
    """CPU seconds (user + system) of this process (the driver) and of the Ray workers under it,
    sampled in a background thread so a worker that exits between phases still counts up to its
    last sample."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self.me = psutil.Process()
        self.interval_s = interval_s
        self.seen: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU seconds
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.last = (0.0, 0.0)

    def sample(self) -> tuple[float, float]:
        """Sample every process now; returns the CPU seconds of (the driver, all workers ever seen)."""
        try:
            workers = [p for p in self.me.children(recursive=True) if _is_worker(p)]
        except Exception:  # noqa: BLE001 - the tree changed while walking it
            workers = []
        with self.lock:
            for p in workers:
                try:
                    t = p.cpu_times()
                    self.seen[(p.pid, p.create_time())] = t.user + t.system
                except Exception:  # noqa: BLE001 - ended since
                    continue
            t = self.me.cpu_times()
            return t.user + t.system, sum(self.seen.values())

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self.sample()

    def start(self) -> CpuMeter:
        """Take the baseline and start sampling."""
        self.last = self.sample()
        self.thread = threading.Thread(target=self._loop, name="mm1data-cpu-meter", daemon=True)
        self.thread.start()
        return self

    def lap(self) -> tuple[float, float]:
        """CPU seconds of (the driver, the workers) since the previous lap (or the start)."""
        now = self.sample()
        spent = (max(0.0, now[0] - self.last[0]), max(0.0, now[1] - self.last[1]))
        self.last = now
        return spent

    def stop(self) -> None:
        """Stop sampling."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=2)


class MeteredLog(StageLog):
    """A :class:`StageLog` that also records the CPU seconds of each stage as it ends: ``cpu_s``
    (driver and workers) and ``worker_cpu_s`` (the workers', where records are processed)."""

    def __init__(self, meter: CpuMeter, quiet: bool = False, json_lines: bool = False) -> None:
        super().__init__(quiet=quiet, json_lines=json_lines)
        self.meter = meter
        self.cpu_s: dict[str, float] = {}
        self.worker_cpu_s: dict[str, float] = {}

    def stage(self, name: str, seconds: float, **counts: object) -> None:
        driver, workers = self.meter.lap()
        self.cpu_s[name] = round(driver + workers, 3)
        self.worker_cpu_s[name] = round(workers, 3)
        super().stage(name, seconds, **counts)


@functools.cache
def _warm_task():
    import ray

    @ray.remote
    def warm() -> int:
        import os

        import mm1data.filters  # noqa: F401 - the imports every phase's tasks need
        import mm1data.tokens.render  # noqa: F401

        return os.getpid()

    return warm


def warm_up_workers(cpus: int) -> None:
    """Start (and import mm1data in) a Ray worker per CPU, so the first phase's CPU time is not
    Ray's start-up."""
    import ray

    ray.get([_warm_task().remote() for _ in range(max(1, cpus))])
