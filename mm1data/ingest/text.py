"""Text-document readers: JSONL (plain, .gz, .zst, ...) in Dolma or C4 shape, and Parquet.

Dolma rows carry ``id``, ``text``, ``source`` and ``metadata.url``; C4 rows ``text``, ``url``,
``timestamp``. Every other field is kept as JSON in ``metadata``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import PurePosixPath

import pyarrow as pa

from mm1data.config import IngestConfig
from mm1data.ingest.base import TableFile, Unit, batched, decode_utf8, open_text, rejected
from mm1data.schemas import TEXT_DOC

CORE_FIELDS = ("id", "text", "url", "source")


def text_row(doc: dict, fallback_id: str, unit: Unit, offset: int, cfg: IngestConfig) -> dict:
    """A TextDoc row from a Dolma/C4-shaped dict, or a reject row."""
    raw_id = doc.get("id")
    row_id = f"{unit.name or 'text'}:{raw_id}" if raw_id not in (None, "") else fallback_id
    text = doc.get("text")
    if text is None:
        return rejected(row_id, unit.path, offset, "missing_field", "text")
    if not isinstance(text, str):
        return rejected(row_id, unit.path, offset, "invalid_field", f"text is {type(text).__name__}")
    if not text.strip():
        return rejected(row_id, unit.path, offset, "empty_text")
    if len(text) > cfg.max_text_chars:
        return rejected(row_id, unit.path, offset, "text_too_long", f"{len(text)} chars", float(len(text)))
    meta = doc.get("metadata")
    if isinstance(meta, str):  # Dolma sometimes stores a repr string; keep it as-is
        meta = {"raw": meta}
    url = doc.get("url") or (meta.get("url") if isinstance(meta, dict) else None)
    extra = {k: v for k, v in doc.items() if k not in CORE_FIELDS and k != "metadata"}
    if isinstance(meta, dict):
        extra.update(meta)
    return {
        "id": row_id,
        "text": text,
        "url": url,
        "source": doc.get("source") or unit.name,
        "lineage": {"source": unit.path, "offset": offset},
        "metadata": json.dumps(extra, default=str, sort_keys=True),
    }


def read_jsonl(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """One TextDoc per JSON line; bad lines (invalid UTF-8, not JSON, no text) are rejects."""
    stem = PurePosixPath(unit.path).name.split(".")[0]

    def rows() -> Iterator[dict]:
        with open_text(unit.path) as f:
            for offset, raw in enumerate(f):
                fallback = f"{stem}:{offset}"
                if not raw.strip():
                    yield rejected(fallback, unit.path, offset, "empty_line")
                    continue
                try:
                    doc = json.loads(decode_utf8(raw))
                except UnicodeDecodeError:
                    yield rejected(fallback, unit.path, offset, "invalid_utf8")
                    continue
                except json.JSONDecodeError as e:
                    yield rejected(fallback, unit.path, offset, "invalid_json", str(e)[:200])
                    continue
                if not isinstance(doc, dict):
                    yield rejected(fallback, unit.path, offset, "invalid_json", "not an object")
                    continue
                yield text_row(doc, fallback, unit, offset, cfg)

    yield from batched(rows(), TEXT_DOC, cfg.rows_per_batch)


def read_parquet_text(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """One TextDoc per Parquet row (columns as in the JSONL shapes)."""
    table = TableFile(unit.path, "parquet", cfg.rows_per_batch, unit.row_groups)
    stem = PurePosixPath(unit.path).stem

    def rows() -> Iterator[dict]:
        offset = unit.first_row
        for batch in table.batches():
            for doc in batch.to_pylist():
                yield text_row(doc, f"{stem}:{offset}", unit, offset, cfg)
                offset += 1

    yield from batched(rows(), TEXT_DOC, cfg.rows_per_batch)
