"""The Arrow record schemas: the one source of truth for what flows between stages.

Every stream table carries its record columns plus one nullable ``reject`` struct column. A row
whose ``reject`` is null is alive; a stage that drops a row fills ``reject`` (stage, reason,
detail, score, duplicate_of) and later stages pass it through untouched. At the end of a job the
runner splits alive rows (kept) from rejected rows (written as :data:`REJECT` records), so every
record that enters is accounted for: read = kept + rejected.

``schemas/records.json`` at the top of the repo is the generated snapshot of these schemas
(``python -m mm1data.schemas > schemas/records.json``); a test fails when the two differ.
"""

from __future__ import annotations

import json
import sys

import pyarrow as pa

SCHEMA_VERSION = "1"

STREAMS = ("caption", "interleaved", "text")
"""Record streams. Synthetic captions are joined onto caption pairs, so they are not a stream."""

LINEAGE = pa.struct(
    [
        pa.field("source", pa.string(), nullable=False),  # file path or URL the record came from
        pa.field("offset", pa.int64(), nullable=False),  # row / line / entry index in that source
    ]
)

REJECT_INFO = pa.struct(
    [
        pa.field("stage", pa.string(), nullable=False),  # e.g. "ingest", "text_quality", "dedup"
        pa.field("reason", pa.string(), nullable=False),  # snake_case, e.g. "no_image_bytes"
        pa.field("detail", pa.string()),  # human-readable context
        pa.field("score", pa.float64()),  # the measured value that decided the drop
        pa.field("duplicate_of", pa.string()),  # id of the survivor, for dedup rejects
    ]
)

CAPTION = pa.struct(
    [
        pa.field("text", pa.string(), nullable=False),
        # "alt_text", "human" or "synthetic:<generator>"
        pa.field("provenance", pa.string(), nullable=False),
    ]
)

IMAGE_FIELDS = [
    pa.field("image", pa.binary()),  # encoded bytes as found (JPEG, PNG, WebP, ...)
    pa.field("image_sha256", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("format", pa.string()),  # Pillow format name, lower case: "jpeg", "png", ...
    pa.field("phash", pa.uint64()),  # 64-bit perceptual hashes computed at the one decode (ingest)
    pa.field("dhash", pa.uint64()),
]

ANNOTATION_FIELDS = [
    pa.field("language", pa.string()),  # written by the language-ID filter
    pa.field("language_score", pa.float32()),
    pa.field("quality_score", pa.float32()),  # higher is better; used to pick dedup survivors
]

CAPTION_PAIR = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        *IMAGE_FIELDS,
        pa.field("captions", pa.list_(CAPTION)),
        pa.field("url", pa.string()),
        pa.field("lineage", LINEAGE),
        *ANNOTATION_FIELDS,
        pa.field("reject", REJECT_INFO),
    ],
    metadata={"name": "CaptionPair", "version": SCHEMA_VERSION},
)

ITEM = pa.struct(
    [
        pa.field("kind", pa.string(), nullable=False),  # "text" or "image"
        pa.field("text", pa.string()),
        *IMAGE_FIELDS,
        pa.field("url", pa.string()),
        pa.field("position", pa.int32()),  # original position in the source document
        pa.field("alt", pa.string()),  # the <img> alt text (web pages)
        pa.field("rendered_width", pa.int32()),  # the <img> width/height attributes in pixels
        pa.field("rendered_height", pa.int32()),
    ]
)

INTERLEAVED_DOC = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("items", pa.list_(ITEM)),
        pa.field("url", pa.string()),
        pa.field("lineage", LINEAGE),
        pa.field("metadata", pa.string()),  # source metadata as a JSON object (WARC record id, date, ...)
        *ANNOTATION_FIELDS,
        # image items dropped from a doc that is itself kept (missing or bad image, ...)
        pa.field("item_rejects", pa.list_(REJECT_INFO)),
        pa.field("reject", REJECT_INFO),
    ],
    metadata={"name": "InterleavedDoc", "version": SCHEMA_VERSION},
)

TEXT_DOC = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("url", pa.string()),
        pa.field("source", pa.string()),  # dataset name, e.g. "c4", "dolma-cc"
        pa.field("lineage", LINEAGE),
        pa.field("metadata", pa.string()),  # free metadata as a JSON object string
        *ANNOTATION_FIELDS,
        pa.field("reject", REJECT_INFO),
    ],
    metadata={"name": "TextDoc", "version": SCHEMA_VERSION},
)

SYNTHETIC_CAPTION = pa.schema(
    [
        pa.field("image_key", pa.string(), nullable=False),  # image sha256 or source id
        pa.field("caption", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),
    ],
    metadata={"name": "SyntheticCaption", "version": SCHEMA_VERSION},
)

REJECT = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the original record's (or item's) id
        pa.field("stream", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("duplicate_of", pa.string()),
        pa.field("lineage", LINEAGE),
    ],
    metadata={"name": "Reject", "version": SCHEMA_VERSION},
)

STREAM_SCHEMAS: dict[str, pa.Schema] = {
    "caption": CAPTION_PAIR,
    "interleaved": INTERLEAVED_DOC,
    "text": TEXT_DOC,
}

ALL_SCHEMAS: dict[str, pa.Schema] = {
    "CaptionPair": CAPTION_PAIR,
    "InterleavedDoc": INTERLEAVED_DOC,
    "TextDoc": TEXT_DOC,
    "SyntheticCaption": SYNTHETIC_CAPTION,
    "Reject": REJECT,
}


def subschema(schema: pa.Schema, names: list[str]) -> pa.Schema:
    """The fields ``names`` of ``schema``, in that order."""
    return pa.schema([schema.field(n) for n in names])


def empty_table(schema: pa.Schema) -> pa.Table:
    """An empty table with ``schema``."""
    return schema.empty_table()


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from row dicts; missing keys become nulls."""
    return pa.Table.from_pylist(rows, schema=schema)


def _type_to_json(t: pa.DataType) -> object:
    if pa.types.is_struct(t):
        return {"struct": [_field_to_json(t.field(i)) for i in range(t.num_fields)]}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"list": _type_to_json(t.value_type)}
    return str(t)


def _field_to_json(f: pa.Field) -> dict:
    return {"name": f.name, "type": _type_to_json(f.type), "nullable": f.nullable}


def schemas_as_json() -> dict:
    """All record schemas as a JSON-able dict (the content of ``schemas/records.json``)."""
    return {
        "version": SCHEMA_VERSION,
        "schemas": {name: [_field_to_json(f) for f in s] for name, s in ALL_SCHEMAS.items()},
    }


if __name__ == "__main__":
    json.dump(schemas_as_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
