"""A seeded record sample, drawn on the workers right after reading (``mm1data plan``).

Every record gets a number in [0, 1) from a hash of ``(seed, stream, lineage source, lineage
offset, id)``; it stays in the sample when the number is below the fraction. The draw depends on
nothing but the record, so the same records are drawn whatever the files, blocks or workers, and
each record is drawn independently of every other (a pair of duplicates is drawn together with
probability p², which the dedup projection relies on). A record left out is not lost: it becomes
a reject ``ingest/not_sampled`` (payload nulled), so read = kept + rejected still holds and the
full corpus's record counts stay exact. Records that ingest itself rejected keep their own reason.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.config import SampleConfig
from mm1data.ingest.base import STAGE
from mm1data.stages import live_mask, reject_rows

NOT_SAMPLED = "not_sampled"
KEEP_COLUMNS = ("id", "lineage", "reject")
"""Columns a record left out of the sample keeps; every other column is nulled."""


def draws(table: pa.Table, stream: str, seed: int) -> np.ndarray:
    """Each row's number in [0, 1), from ``(seed, stream, lineage.source, lineage.offset, id)``."""
    ids = table.column("id").to_pylist()
    lineage = table.column("lineage")
    sources = pc.struct_field(lineage, "source").to_pylist()
    offsets = pc.struct_field(lineage, "offset").to_pylist()
    out = np.empty(len(ids), np.float64)
    for i, (rid, src, off) in enumerate(zip(ids, sources, offsets, strict=True)):
        key = f"{seed}\x1f{stream}\x1f{src}\x1f{off}\x1f{rid}".encode()
        out[i] = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
    return out


def sample_rows(table: pa.Table, stream: str, cfg: SampleConfig) -> pa.Table:
    """``table`` with its live records outside the sample rejected ``ingest/not_sampled``."""
    if cfg.fraction >= 1.0 or table.num_rows == 0:
        return table
    out = live_mask(table) & (draws(table, stream, cfg.seed) >= cfg.fraction)
    if not out.any():
        return table
    table = reject_rows(table, out, STAGE, NOT_SAMPLED)
    mask = pa.array(out)
    for j, f in enumerate(table.schema):
        if f.name not in KEEP_COLUMNS and f.nullable:
            col = table.column(j)
            table = table.set_column(j, f, pc.if_else(mask, pa.nulls(table.num_rows, f.type), col))
    return table
