"""Synthetic captions: model-written captions keyed by image sha256 or source id, joined onto
caption pairs with provenance ``synthetic:<generator>``.

The JSONL files are read on workers like any source (:func:`read_synthetic`: one row per line,
bad lines rejected ``invalid_utf8`` / ``invalid_json`` / ``missing_field``). The join runs on
workers too, as two co-partitioned steps (:mod:`mm1data.runners.shuffle`), never as a table on
the driver: first each synthetic line meets the live pairs whose sha256 or id equals its key
(:func:`match_lines`: lines that meet none become ``no_matching_image`` rejects), then each pair
meets the captions matched to it (:func:`attach_captions`: sha256 matches first, then id matches,
each in file order). A pair can carry human, alt-text and several synthetic captions at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.config import IngestConfig, SourceSpec
from mm1data.errors import UsageError
from mm1data.ingest.base import Unit, batched, decode_utf8, open_text, reject_info
from mm1data.runners.shuffle import ROWS_PER_TASK, cogroup, hash64, join_indices, partitions_for
from mm1data.schemas import CAPTION, LINEAGE, REJECT_INFO
from mm1data.stages import live_mask

KEY_FIELDS = ("image_key", "sha256", "image_sha256", "id", "key")
ROWS_PER_PARTITION = ROWS_PER_TASK

SYNTHETIC_LINE = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # synthetic:<offset> or synthetic:<image key>
        pa.field("image_key", pa.string()),  # image sha256 or source id
        pa.field("caption", pa.string()),
        pa.field("generator", pa.string()),
        pa.field("lineage", LINEAGE),
        pa.field("reject", REJECT_INFO),
    ],
    metadata={"name": "SyntheticCaptionLine", "version": "1"},
)
"""One line of a synthetic-captions file: a caption for ``image_key``, or a reject."""


def read_synthetic(unit: Unit, cfg: IngestConfig) -> Iterator[pa.Table]:
    """The lines of one synthetic-captions JSONL file as :data:`SYNTHETIC_LINE` rows (worker side)."""

    def rows() -> Iterator[dict]:
        with open_text(unit.path) as f:
            for offset, raw in enumerate(f):
                lineage = {"source": unit.path, "offset": offset}
                bad = {"id": f"synthetic:{offset}", "lineage": lineage}
                try:
                    doc = json.loads(decode_utf8(raw))
                except UnicodeDecodeError:
                    yield {**bad, "reject": reject_info("invalid_utf8")}
                    continue
                except json.JSONDecodeError:
                    yield {**bad, "reject": reject_info("invalid_json")}
                    continue
                key = (
                    next((doc.get(k) for k in KEY_FIELDS if doc.get(k)), None)
                    if isinstance(doc, dict)
                    else None
                )
                caption = doc.get("caption") if isinstance(doc, dict) else None
                if not key or not isinstance(caption, str) or not caption.strip():
                    yield {**bad, "reject": reject_info("missing_field")}
                    continue
                yield {
                    "id": f"synthetic:{key}",
                    "image_key": str(key),
                    "caption": caption.strip(),
                    "generator": str(doc.get("generator") or "unknown"),
                    "lineage": lineage,
                }

    yield from batched(rows(), SYNTHETIC_LINE, cfg.rows_per_batch)


def require_specs(specs: tuple[SourceSpec, ...]) -> None:
    """Fail fast when a synthetic-captions source has an unsupported format."""
    for spec in specs:
        if spec.format not in ("auto", "jsonl"):
            raise UsageError(
                f"unknown synthetic-captions format {spec.format!r} for {spec.path} (known: jsonl)"
            )


def row_key(table: pa.Table, stream: str) -> list[str]:
    """The unique key of each record of a stream batch: stream, lineage and id."""
    lineage = table.column("lineage").to_pylist()
    return [
        f"{stream}:{lin['source']}:{lin['offset']}:{rid}" if lin else f"{stream}::{rid}"
        for lin, rid in zip(lineage, table.column("id").to_pylist(), strict=True)
    ]


def with_row_hash(table: pa.Table, stream: str) -> pa.Table:
    """``table`` with an int64 ``_row`` column: the hash of :func:`row_key`."""
    return table.append_column("_row", pa.array(hash64(row_key(table, stream)), pa.int64()))


PAIR_KEY = pa.schema([("k", pa.int64()), ("key", pa.string()), ("row", pa.int64()), ("by", pa.int8())])
MATCH = SYNTHETIC_LINE.append(pa.field("row", pa.int64())).append(pa.field("by", pa.int8()))


def pair_keys(table: pa.Table) -> pa.Table:
    """(k, key, row, by) for every live pair: its image sha256 (by 0) and its id (by 1)."""
    live = pa.array(live_mask(table))
    table = with_row_hash(table.filter(live), "caption")
    parts = []
    for by, col in ((0, "image_sha256"), (1, "id")):
        t = table.filter(pc.is_valid(table.column(col)))
        keys = t.column(col).to_pylist()
        parts.append(
            pa.table(
                [
                    hash64(keys),
                    pa.array(keys, pa.string()),
                    t.column("_row"),
                    np.full(len(keys), by, np.int8),
                ],
                schema=PAIR_KEY,
            )
        )
    return pa.concat_tables(parts)


def _line_hash(table: pa.Table) -> pa.Table:
    keys = [k or "" for k in table.column("image_key").to_pylist()]
    return table.append_column("k", pa.array(hash64(keys), pa.int64()))


def match_lines(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn: every synthetic line of this partition once with ``row`` null (a live line that
    no pair has the key of is rejected ``no_matching_image``), plus one row per pair it matches."""
    keys, lines = parts["keys"], parts["lines"].drop_columns(["k"])
    live = pc.is_null(lines.column("reject")).to_numpy(zero_copy_only=False)
    keys_of_lines = pc.if_else(pa.array(live), lines.column("image_key"), pa.scalar(None, pa.string()))
    li, ki = join_indices(keys_of_lines, keys.column("key"))
    matches = lines.take(pa.array(li))
    matches = matches.append_column("row", keys.column("row").take(pa.array(ki)))
    matches = matches.append_column("by", keys.column("by").take(pa.array(ki)))
    matched = np.zeros(lines.num_rows, bool)
    matched[li] = True
    old = lines.column("reject").to_pylist()
    rej = [
        r if not ok else (None if m else reject_info("no_matching_image"))
        for r, ok, m in zip(old, live.tolist(), matched.tolist(), strict=True)
    ]
    verdicts = lines.set_column(lines.schema.get_field_index("reject"), "reject", pa.array(rej, REJECT_INFO))
    n = verdicts.num_rows
    verdicts = verdicts.append_column("row", pa.nulls(n, pa.int64())).append_column(
        "by", pa.nulls(n, pa.int8())
    )
    return pa.concat_tables([verdicts.cast(MATCH), matches.cast(MATCH)])


def attach_captions(parts: dict[str, pa.Table]) -> pa.Table:
    """cogroup fn: pairs with their matched synthetic captions appended (by sha256, then by id,
    each in file order)."""
    pairs, matches = parts["pairs"], parts["matches"]
    if matches.num_rows == 0:
        return pairs.drop_columns(["_row"])
    lineage = matches.column("lineage")
    order = pc.sort_indices(
        pa.table(
            {
                "row": matches.column("row"),
                "by": matches.column("by"),
                "source": pc.struct_field(lineage, "source"),
                "offset": pc.struct_field(lineage, "offset"),
            }
        ),
        [("row", "ascending"), ("by", "ascending"), ("source", "ascending"), ("offset", "ascending")],
    )
    matches = matches.take(order)
    extra: dict[int, list[dict]] = {}
    for row, text, gen in zip(
        *(matches.column(c).to_pylist() for c in ("row", "caption", "generator")), strict=True
    ):
        extra.setdefault(row, []).append({"text": text, "provenance": f"synthetic:{gen}"})
    captions = pairs.column("captions").to_pylist()
    for i, row in enumerate(pairs.column("_row").to_pylist()):
        if row in extra and captions[i] is not None:
            captions[i] = captions[i] + extra[row]
    j = pairs.schema.get_field_index("captions")
    pairs = pairs.set_column(j, pairs.schema.field(j), pa.array(captions, pa.list_(CAPTION)))
    return pairs.drop_columns(["_row"])


def _pairs_with_row(table: pa.Table) -> pa.Table:
    return with_row_hash(table, "caption")


def _matches_only(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_valid(table.column("row")))


def _verdicts_only(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_null(table.column("row"))).select(SYNTHETIC_LINE.names)


def unmatched_lines(lines: pa.Table) -> pa.Table:
    """The verdicts of synthetic lines when there are no caption pairs: every live line unmatched."""
    return _verdicts_only(match_lines({"keys": PAIR_KEY.empty_table(), "lines": _line_hash(lines)}))


def join_synthetic(captions, lines, pair_rows: int, line_rows: int) -> tuple:
    """(caption pairs with synthetic captions attached, the synthetic lines with their verdicts),
    as Ray datasets, joined on workers. ``pair_rows``/``line_rows`` and the bytes of the
    (materialized) ``captions`` size the partitions."""
    from mm1data.schemas import CAPTION_PAIR

    keys = captions.map_batches(pair_keys, batch_format="pyarrow")
    lines_k = lines.map_batches(_line_hash, batch_format="pyarrow")
    p1 = partitions_for(2 * pair_rows + line_rows, ROWS_PER_PARTITION)
    matched = cogroup(
        {"keys": keys, "lines": lines_k},
        {"keys": "k", "lines": "k"},
        p1,
        match_lines,
        schemas={"keys": PAIR_KEY, "lines": SYNTHETIC_LINE.append(pa.field("k", pa.int64()))},
    ).materialize()
    p2 = partitions_for(pair_rows, ROWS_PER_PARTITION, captions.size_bytes())
    pairs = cogroup(
        {
            "pairs": captions.map_batches(_pairs_with_row, batch_format="pyarrow"),
            "matches": matched.map_batches(_matches_only, batch_format="pyarrow"),
        },
        {"pairs": "_row", "matches": "row"},
        p2,
        attach_captions,
        schemas={"pairs": CAPTION_PAIR.append(pa.field("_row", pa.int64())), "matches": MATCH},
        stream="pairs",
    )
    return pairs, matched.map_batches(_verdicts_only, batch_format="pyarrow")
