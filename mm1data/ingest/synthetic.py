"""Synthetic captions: model-written captions keyed by image sha256 or source id, joined onto
caption pairs with provenance ``synthetic:<generator>``.

The synthetic table is small next to the images it describes, so the job reads it whole on the
driver and broadcasts it to the caption readers (one ``ray.put``); a pair can then carry human,
alt-text and several synthetic captions at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pyarrow as pa

from mm1data.config import SourceSpec
from mm1data.errors import UsageError
from mm1data.ingest.base import decode_utf8, expand_paths, open_text
from mm1data.schemas import SYNTHETIC_CAPTION

KEY_FIELDS = ("image_key", "sha256", "image_sha256", "id", "key")


def read_synthetic(specs: Iterable[SourceSpec]) -> tuple[pa.Table, list[dict]]:
    """All synthetic captions of ``specs`` as a SYNTHETIC_CAPTION table, plus the bad lines
    (``{"id", "source", "offset", "reason"}``) so the job can count them as rejects."""
    rows, bad = [], []
    for spec in specs:
        for path in expand_paths(spec):
            with open_text(path) as f:
                for offset, raw in enumerate(f):
                    reason = None
                    try:
                        doc = json.loads(decode_utf8(raw))
                    except UnicodeDecodeError:
                        reason = "invalid_utf8"
                    except json.JSONDecodeError:
                        reason = "invalid_json"
                    else:
                        key = (
                            next((doc.get(k) for k in KEY_FIELDS if doc.get(k)), None)
                            if isinstance(doc, dict)
                            else None
                        )
                        caption = doc.get("caption") if isinstance(doc, dict) else None
                        if not key or not isinstance(caption, str) or not caption.strip():
                            reason = "missing_field"
                        else:
                            rows.append(
                                {
                                    "image_key": str(key),
                                    "caption": caption.strip(),
                                    "generator": str(doc.get("generator") or "unknown"),
                                }
                            )
                    if reason:
                        bad.append(
                            {"id": f"synthetic:{offset}", "source": path, "offset": offset, "reason": reason}
                        )
    return pa.Table.from_pylist(rows, schema=SYNTHETIC_CAPTION), bad


def synthetic_index(table: pa.Table) -> dict[str, list[dict]]:
    """image_key -> captions (``{"text", "provenance"}``) in file order."""
    index: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        index.setdefault(row["image_key"], []).append(
            {"text": row["caption"], "provenance": f"synthetic:{row['generator']}"}
        )
    return index


class AttachSynthetic:
    """Stage that appends matching synthetic captions (by image sha256, then by id) to live pairs."""

    name = "ingest"

    def __init__(self, index: dict[str, list[dict]]) -> None:
        self.index = index

    def __call__(self, table: pa.Table) -> pa.Table:
        if not self.index:
            return table
        captions = table.column("captions").to_pylist()
        shas = table.column("image_sha256").to_pylist()
        ids = table.column("id").to_pylist()
        for i, caps in enumerate(captions):
            if caps is None:
                continue
            extra = self.index.get(shas[i] or "", []) + self.index.get(ids[i], [])
            if extra:
                captions[i] = caps + extra
        j = table.schema.get_field_index("captions")
        return table.set_column(j, table.schema.field(j), pa.array(captions, type=table.schema.field(j).type))


def require_specs(specs: Iterable[SourceSpec]) -> None:
    """Fail fast when a synthetic-captions source has an unsupported format."""
    for spec in specs:
        if spec.format not in ("auto", "jsonl"):
            raise UsageError(
                f"unknown synthetic-captions format {spec.format!r} for {spec.path} (known: jsonl)"
            )
