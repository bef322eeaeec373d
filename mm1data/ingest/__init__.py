"""Ingest: one module per source kind, mapping raw sources onto the record schemas.

:data:`READERS` maps ``(stream, format)`` to the worker-side read function; :func:`plan`
expands a source into :class:`~mm1data.ingest.base.Unit` work items on the driver, detecting
formats from file names and failing fast (``UsageError``) on a missing path or unknown format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa

from mm1data.config import IngestConfig, SourceSpec
from mm1data.errors import UsageError
from mm1data.ingest import captions, interleaved, synthetic, text, warc
from mm1data.ingest.base import Unit, expand_paths

Reader = Callable[[Unit, IngestConfig], Iterator[pa.Table]]

READERS: dict[tuple[str, str], Reader] = {
    ("caption", "coco"): captions.read_coco,
    ("caption", "webdataset"): captions.read_webdataset,
    ("caption", "parquet"): captions.read_table_captions,
    ("caption", "csv"): captions.read_table_captions,
    ("caption", "tsv"): captions.read_table_captions,
    ("caption", "jsonl"): captions.read_table_captions,
    ("interleaved", "mmc4"): interleaved.read_mmc4,
    ("interleaved", "obelics"): interleaved.read_obelics,
    ("interleaved", "zim"): interleaved.read_zim,
    ("interleaved", "warc"): warc.read_warc,
    ("text", "jsonl"): text.read_jsonl,
    ("text", "parquet"): text.read_parquet_text,
    ("synthetic_caption", "jsonl"): synthetic.read_synthetic,
}

EXTENSIONS: dict[str, dict[str, str]] = {
    "caption": {
        ".json": "coco",
        ".tar": "webdataset",
        ".parquet": "parquet",
        ".csv": "csv",
        ".csv.gz": "csv",
        ".tsv": "tsv",
        ".tsv.gz": "tsv",
        ".jsonl": "jsonl",
        ".jsonl.gz": "jsonl",
        ".jsonl.zst": "jsonl",
    },
    "interleaved": {
        ".jsonl": "mmc4",
        ".jsonl.gz": "mmc4",
        ".jsonl.zst": "mmc4",
        ".parquet": "obelics",
        ".zim": "zim",
        ".warc": "warc",
        ".warc.gz": "warc",
        ".warc.zst": "warc",
    },
    "text": {
        ".jsonl": "jsonl",
        ".json": "jsonl",
        ".jsonl.gz": "jsonl",
        ".json.gz": "jsonl",
        ".jsonl.zst": "jsonl",
        ".json.zst": "jsonl",
        ".parquet": "parquet",
    },
    "synthetic_caption": {".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".jsonl.zst": "jsonl"},
}


def detect_format(stream: str, path: str) -> str | None:
    """The format of ``path`` for ``stream`` from its extension (longest match), or None."""
    name = path.rsplit("/", 1)[-1].lower()
    for ext in sorted(EXTENSIONS[stream], key=len, reverse=True):
        if name.endswith(ext):
            return EXTENSIONS[stream][ext]
    return None


def plan(stream: str, spec: SourceSpec) -> list[Unit]:
    """Work units for one source: one per matching file. Raises ``UsageError`` on a bad source."""
    known = sorted({fmt for (s, fmt) in READERS if s == stream})
    if spec.format != "auto" and (stream, spec.format) not in READERS:
        raise UsageError(
            f"unknown {stream} format {spec.format!r} for {spec.path} (known: {', '.join(known)})"
        )
    files = expand_paths(spec)
    units = []
    for path in files:
        fmt = spec.format if spec.format != "auto" else detect_format(stream, path)
        if fmt is None:
            if len(files) == 1:
                names = ", ".join(known)
                raise UsageError(
                    f"cannot tell the {stream} format of {path}; give FORMAT:PATH (known: {names})"
                )
            continue  # a folder may hold other files (images beside a COCO json, READMEs)
        units.append(Unit(stream=stream, format=fmt, path=path, images=spec.images, name=spec.name))
    if not units:
        raise UsageError(f"no {stream} input files found in {spec.path}")
    return units


def read_unit(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """Run the reader for ``unit`` (worker side)."""
    return READERS[(unit.stream, unit.format)](unit, cfg)
