"""The ingest phase (sources → normalized records on Ray Data) and the ``mm1data ingest`` job.

Sources are planned into work units on the driver (one per file; a bad path or format fails
fast); Parquet files are split into units of row groups on workers, and the units are read on
workers; synthetic captions are joined onto caption pairs on workers
(:mod:`mm1data.ingest.synthetic`). ``mm1data ingest`` runs this one phase through the executor
and exports the kept records: ``<stream>/*.parquet`` (stream schema without ``reject``),
``rejects/<stream>/`` and ``stats.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from mm1data.config import IngestConfig, Recipe, SampleConfig, Sources, reader_config, to_dict
from mm1data.errors import UsageError
from mm1data.ingest import plan, read_unit
from mm1data.ingest.base import Unit
from mm1data.ingest.sample import sample_rows
from mm1data.ingest.synthetic import SYNTHETIC_LINE, join_synthetic, require_specs, unmatched_lines
from mm1data.io.fs import fsspec_fs
from mm1data.runners.executor import Context, Data, Phase, count_rows, stream_output
from mm1data.schemas import STREAM_SCHEMAS, STREAMS

SOURCE_FIELDS = {"caption": "captions", "interleaved": "interleaved", "text": "text"}


def plan_streams(recipe: Recipe) -> dict[str, list[Unit]]:
    """Work units per stream (``synthetic_caption`` too); fails fast (``UsageError``) on any bad
    source before Ray starts."""
    require_specs(recipe.sources.synthetic_captions)
    units = {}
    for stream, name in SOURCE_FIELDS.items():
        specs = getattr(recipe.sources, name)
        if specs:
            units[stream] = [u for spec in specs for u in plan(stream, spec)]
    if not units:
        raise UsageError("no caption, interleaved or text sources given")
    synthetic = recipe.sources.synthetic_captions
    if synthetic:
        specs = [dataclasses.replace(s, format="jsonl") for s in synthetic]
        units["synthetic_caption"] = [u for spec in specs for u in plan("synthetic_caption", spec)]
    return units


def read_units(batch: pa.Table, cfg: IngestConfig, sample: SampleConfig | None = None) -> Iterator[pa.Table]:
    """Ray Data UDF: read every unit named in ``batch`` (one per row), yielding record batches;
    with ``sample``, records of a stream outside it become ``not_sampled`` rejects right away."""
    for text in batch.column("unit").to_pylist():
        unit = Unit.from_json(text)
        for table in read_unit(unit, cfg):
            yield sample_rows(table, unit.stream, sample) if sample and unit.stream in STREAMS else table


PARQUET_FORMATS = {("caption", "parquet"), ("interleaved", "obelics"), ("text", "parquet")}
"""Readers that read a unit's row groups only: their files are split into units of
:data:`~mm1data.runners.shuffle.BYTES_PER_TASK` of row groups."""


def split_units(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: each Parquet unit of ``batch`` as units of consecutive row groups."""
    from mm1data.ingest.base import split_parquet
    from mm1data.runners.shuffle import BYTES_PER_TASK

    out = []
    for text in batch.column("unit").to_pylist():
        unit = Unit.from_json(text)
        parquet = (unit.stream, unit.format) in PARQUET_FORMATS
        out += [u.to_json() for u in (split_parquet(unit, BYTES_PER_TASK) if parquet else [unit])]
    return pa.table({"unit": pa.array(out, pa.string())})


def read_stream(units: list[Unit], cfg: IngestConfig, sample: SampleConfig | None = None):
    """The records of ``units`` (one stream) as a lazy Ray dataset, one read task per unit; a
    Parquet file is first split (on workers, from its footer) into units of row groups, so a
    single large file is read by many tasks."""
    import ray.data

    ds = ray.data.from_items([{"unit": u.to_json()} for u in units], override_num_blocks=len(units))
    if any((u.stream, u.format) in PARQUET_FORMATS for u in units):
        ds = ds.map_batches(split_units, batch_size=1, batch_format="pyarrow").materialize()
        ds = ds.repartition(ds.count())  # one unit per read task
    return ds.map_batches(read_units, fn_args=(cfg, sample), batch_size=1, batch_format="pyarrow")


def source_signature(units: dict[str, list[Unit]]) -> list:
    """Each source file with its size and mtime, so an edited input invalidates the ingest phase."""
    sig = []
    for stream, us in sorted(units.items()):
        for u in us:
            fs, path = fsspec_fs(u.path)
            try:
                info = fs.info(path)
                sig.append([stream, u.to_json(), info.get("size"), str(info.get("mtime", info.get("ETag")))])
            except (FileNotFoundError, OSError):
                sig.append([stream, u.to_json(), None, None])
    return sig


class IngestPhase(Phase):
    """Read every source into records of the stream schemas (bad records become rejects); with
    ``sample`` (``mm1data plan``), only a seeded sample of the records goes on.

    ``synthetic`` False leaves the synthetic captions unjoined (their lines read and checked) for
    the download phase, which joins them once the URL-only pairs have their images (and sha256)."""

    name = "ingest"

    def __init__(
        self,
        sources: Sources,
        cfg: IngestConfig,
        units: dict[str, list[Unit]],
        sample: SampleConfig | None = None,
        synthetic: bool = True,
    ) -> None:
        self.sources, self.cfg, self.units, self.sample = sources, cfg, units, sample
        self.synthetic = synthetic
        self.outputs = tuple(stream_output(s) for s in units)

    def fingerprint(self) -> Any:
        sample = [to_dict(self.sample)] if self.sample else []
        later = [] if self.synthetic else ["synthetic captions joined later"]
        return [to_dict(self.sources), to_dict(self.cfg), source_signature(self.units), *sample, *later]

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        out = {s: read_stream(us, self.cfg, self.sample) for s, us in self.units.items()}
        if not self.synthetic:
            return out
        if "synthetic_caption" in out and "caption" in out:
            captions = out["caption"].materialize()
            lines = out["synthetic_caption"].materialize()
            out["caption"], out["synthetic_caption"] = join_synthetic(
                captions, lines, count_rows(captions), count_rows(lines)
            )
        elif "synthetic_caption" in out:
            out["synthetic_caption"] = out["synthetic_caption"].map_batches(
                unmatched_lines, batch_format="pyarrow"
            )
        return out


class ReadRecordsPhase(Phase):
    """The records of an earlier job's output (``<input>/<stream>/*.parquet``), for ``mm1data
    filter`` and ``mm1data dedup``; not checkpointed (it only reads)."""

    name = "read"
    checkpoint = False

    def __init__(self, input_dir: str) -> None:
        self.input_dir = input_dir.rstrip("/")
        fs, root = fsspec_fs(self.input_dir)
        self.found = [
            s
            for s in STREAM_SCHEMAS
            if fs.isdir(f"{root}/{s}") and any(p.endswith(".parquet") for p in fs.find(f"{root}/{s}"))
        ]
        if not self.found:
            raise UsageError(f"no ingest output (caption/, interleaved/ or text/ Parquet) under {input_dir}")
        self.outputs = tuple(stream_output(s) for s in self.found)

    def fingerprint(self) -> Any:
        return [self.input_dir]

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        import ray.data

        from mm1data.io.fs import arrow_fs

        out = {}
        for s in self.found:
            fs, path = arrow_fs(f"{self.input_dir}/{s}")
            out[s] = ray.data.read_parquet(path, filesystem=fs).map_batches(
                with_reject_column, fn_args=(s,), batch_format="pyarrow"
            )
        return out


def with_reject_column(table: pa.Table, stream: str) -> pa.Table:
    """A stored batch in its full stream schema: the null ``reject`` column kept rows lose when
    exported, and any column an older writer did not have (nulls built from Python values:
    ``pa.nulls`` of a struct leaves nulls in non-nullable children, which Parquet refuses)."""
    schema = STREAM_SCHEMAS[stream]
    cols = [
        table.column(f.name) if f.name in table.column_names else pa.array([None] * table.num_rows, f.type)
        for f in schema
    ]
    return pa.table(cols, schema=schema)


def export_streams(data: Data, output: str, streams: tuple[str, ...] = tuple(STREAM_SCHEMAS)) -> None:
    """Write the kept records of ``streams`` as ``output/<stream>/*.parquet`` (without ``reject``)."""
    from mm1data.io.fs import arrow_fs

    for s in streams:
        if s not in data:
            continue
        fs, path = arrow_fs(f"{output.rstrip('/')}/{s}")
        fsspec, local = fsspec_fs(f"{output.rstrip('/')}/{s}")
        if fsspec.exists(local):
            fsspec.rm(local, recursive=True)
        data.kept(s).drop_columns(["reject"]).write_parquet(path, filesystem=fs, min_rows_per_file=100_000)


def ingest_phases(recipe: Recipe, units: dict[str, list[Unit]]) -> list[Phase]:
    """The ingest phase, and the download phase after it when ``recipe.download`` is enabled."""

    if not recipe.download.enabled:
        return [IngestPhase(recipe.sources, recipe.ingest, units)]
    from mm1data.download.phase import DownloadPhase

    return [
        IngestPhase(recipe.sources, reader_config(recipe), units, synthetic=False),
        DownloadPhase(recipe.download, recipe.ingest, synthetic=True),
    ]


def run_ingest(recipe: Recipe, output: str, quiet: bool = False) -> dict:
    """Ingest every source of ``recipe`` into ``output`` (fetching URL-only images first when
    ``recipe.download`` is enabled); returns (and writes) the stats."""
    from mm1data.report import StageLog
    from mm1data.runners.executor import Executor

    units = plan_streams(recipe)

    def amend(stats: dict, data: Data) -> dict:
        export_streams(data, output)
        stats["units"] = {s: len(u) for s, u in units.items()}
        stats["ray_start_s"] = stats["timings_s"]["ray_start"]
        return stats

    executor = Executor(output, recipe.ray.address, recipe.ray.num_cpus, StageLog(quiet=True))
    return executor.run(ingest_phases(recipe, units), amend=amend).stats


__all__ = [
    "IngestPhase",
    "ReadRecordsPhase",
    "SYNTHETIC_LINE",
    "export_streams",
    "ingest_phases",
    "plan_streams",
    "run_ingest",
]
