"""Exact duplicates: a hash of normalized text (text docs and interleaved docs' text, one index)
and the sha256 of image bytes (caption images and images inside interleaved docs, one index).

Text is normalized by Unicode lower case and collapsing every run of white space to one space,
so copies that differ only in case or layout are caught here, before MinHash.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.dedup.components import item_member, record_member
from mm1data.filters.words import table_texts
from mm1data.stages import live_mask

ENTRY = pa.schema([("key", pa.string()), ("member", pa.string()), ("quality", pa.float64())])
"""One indexed member per row: its bucket key, name and ``quality_score`` (NaN when missing)."""

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, white space collapsed, ends stripped."""
    return _SPACE.sub(" ", text.lower()).strip()


def text_key(text: str) -> str:
    """Hex blake2b-128 of the normalized text."""
    return hashlib.blake2b(normalize_text(text).encode(), digest_size=16).hexdigest()


def _quality(table: pa.Table) -> list[float]:
    if "quality_score" not in table.column_names:
        return [float("nan")] * table.num_rows
    return [float("nan") if q is None else float(q) for q in table.column("quality_score").to_pylist()]


def live_texts(table: pa.Table, stream: str) -> tuple[list[str], list[str], list[float]]:
    """(members, texts, qualities) of the live records of a text or interleaved batch that have text."""
    live = live_mask(table)
    ids = table.column("id").to_pylist()
    texts = table_texts(table)
    quality = _quality(table)
    rows = [i for i in np.flatnonzero(live) if texts[i].strip()]
    return [record_member(stream, ids[i]) for i in rows], [texts[i] for i in rows], [quality[i] for i in rows]


def live_images(table: pa.Table, stream: str) -> Iterator[tuple[str, float, pa.Scalar, dict]]:
    """(member, quality, image, image columns) of every image of the live records of a caption or
    interleaved batch: the pair's image, or each image item of a doc. ``image`` is its bytes as an
    Arrow scalar (``.as_py()`` copies them: only where a hash is missing); the image columns are
    what ingest recorded (``image_sha256``, ``phash``, ``dhash``; None when absent)."""
    live = live_mask(table)
    ids = table.column("id").to_pylist()
    quality = _quality(table)
    if stream == "caption":
        images = table.column("image")
        present = pc.is_valid(images).to_numpy(zero_copy_only=False)
        cols = {c: _column(table, c) for c in IMAGE_COLUMNS}
        for i in np.flatnonzero(live & present):
            yield record_member(stream, ids[i]), quality[i], images[i], {c: v[i] for c, v in cols.items()}
        return
    row = 0
    for chunk in table.column("items").chunks:
        lengths = pc.fill_null(chunk.value_lengths(), 0).to_numpy()
        items = chunk.flatten()  # every item of the chunk's docs, in order
        fields = dict(zip([f.name for f in items.type], items.flatten(), strict=True))
        kind, pos = fields["kind"].to_pylist(), fields["position"].to_pylist()
        image = fields["image"]
        has = pc.is_valid(image).to_numpy(zero_copy_only=False)
        cols = {c: fields[c].to_pylist() if c in fields else [None] * len(items) for c in IMAGE_COLUMNS}
        at = 0
        for n in lengths.tolist():
            if live[row]:
                for k in range(n):
                    j = at + k
                    if kind[j] == "image" and has[j]:
                        member = item_member(ids[row], {"position": pos[j]}, k)
                        yield member, quality[row], image[j], {c: v[j] for c, v in cols.items()}
            at += n
            row += 1


IMAGE_COLUMNS = ("image_sha256", "phash", "dhash")


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def text_entries(table: pa.Table, stream: str) -> pa.Table:
    """:data:`ENTRY` rows keyed by the normalized-text hash."""
    members, texts, quality = live_texts(table, stream)
    return pa.table([[text_key(t) for t in texts], members, quality], schema=ENTRY)


def image_entries(table: pa.Table, stream: str) -> pa.Table:
    """:data:`ENTRY` rows keyed by the sha256 of the image bytes."""
    rows = [
        (meta["image_sha256"] or hashlib.sha256(image.as_py()).hexdigest(), member, q)
        for member, q, image, meta in live_images(table, stream)
    ]
    return pa.table([list(c) for c in zip(*rows, strict=True)] if rows else [[], [], []], schema=ENTRY)


def exact_pairs(group: pa.Table) -> pa.Table:
    """Pairs of one key group (all members identical): the first member with each other one."""
    members = sorted(group.column("member").to_pylist())
    quality = dict(zip(group.column("member").to_pylist(), group.column("quality").to_pylist(), strict=True))
    first = members[0]
    others = members[1:]
    return pa.table(
        {
            "a": [first] * len(others),
            "b": others,
            "sim": [1.0] * len(others),
            "qa": [quality[first]] * len(others),
            "qb": [quality[m] for m in others],
        },
        schema=PAIR,
    )


PAIR = pa.schema(
    [
        ("a", pa.string()),
        ("b", pa.string()),
        ("sim", pa.float64()),
        ("qa", pa.float64()),
        ("qb", pa.float64()),
    ]
)
"""A duplicate pair found in a bucket: members, similarity, and both quality scores."""
