"""Filters: one module per family, chained per stream by :func:`filter_stages`.

Most filters are pure per-batch stages. Two rules need the whole corpus (a caption repeated
across many images; an image URL used by many docs): they are :class:`CorpusPhase` entries in
the chain. :func:`run_chain` applies a chain to a Ray dataset: per-batch stages run fused in Ray
tasks (models set up once per worker process), and a corpus phase counts with one co-partitioned
step over (key, partner) rows and applies its verdicts with a second one keyed by record
(:mod:`mm1data.runners.shuffle`), so no per-key table ever reaches the driver or a broadcast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mm1data.config import FilterConfig
from mm1data.filters.c4 import C4Filter
from mm1data.filters.caption import CaptionFilter, RepeatedCaptionFilter, normalize_caption
from mm1data.filters.image import (
    FrequentImageUrlFilter,
    ImageFilter,
    InterleavedDocFilter,
    InterleavedImageFilter,
)
from mm1data.filters.language import LanguageFilter
from mm1data.filters.obelics import ParagraphFilter, WebDocumentFilter
from mm1data.filters.text_quality import GopherQualityFilter, GopherRepetitionFilter
from mm1data.runners.pipeline import apply_stages
from mm1data.runners.shuffle import ROWS_PER_TASK, cogroup, hash64, partitions_for
from mm1data.stages import Stage, live_mask

__all__ = ["CorpusPhase", "filter_stages", "run_chain", "caption_partners", "url_partners"]

ROWS_PER_PARTITION = ROWS_PER_TASK
PARTNERS = pa.schema([("k", pa.int64()), ("key", pa.string()), ("partner", pa.int64()), ("row", pa.int64())])
"""One (key, partner) occurrence: a caption and the image it describes, or an image URL and the
doc that uses it; ``row`` is the record it came from (hash of stream, lineage and id)."""
HITS = pa.schema([("row", pa.int64()), ("key", pa.string()), ("n", pa.int64())])


def _row_hashes(table: pa.Table, stream: str) -> np.ndarray:
    from mm1data.ingest.synthetic import row_key

    return hash64(row_key(table, stream))


def caption_partners(table: pa.Table) -> pa.Table:
    """(normalized caption, image) per caption of the live pairs of a batch."""
    live = live_mask(table)
    rows = _row_hashes(table, "caption")
    ids = table.column("id").to_pylist()
    shas = table.column("image_sha256").to_pylist()
    images = hash64([sha or rid for sha, rid in zip(shas, ids, strict=True)])
    keys, partners, owners = [], [], []
    for i, caps in enumerate(table.column("captions").to_pylist()):
        if live[i]:
            for c in caps or []:
                keys.append(normalize_caption(c["text"] or ""))
                partners.append(images[i])
                owners.append(rows[i])
    return _partners(keys, partners, owners)


def url_partners(table: pa.Table) -> pa.Table:
    """(image URL, doc) per image item of the live interleaved docs of a batch."""
    live = live_mask(table)
    rows = _row_hashes(table, "interleaved")
    keys, owners = [], []
    for i, items in enumerate(table.column("items").to_pylist()):
        if live[i]:
            for item in items or []:
                if item["kind"] == "image" and item.get("url"):
                    keys.append(item["url"])
                    owners.append(rows[i])
    return _partners(keys, owners, owners)


def _partners(keys: list[str], partners: list, owners: list) -> pa.Table:
    """A :data:`PARTNERS` table; ``partners`` and ``owners`` are int64 hashes."""
    ints = [pa.array(np.asarray(x, np.int64), pa.int64()) for x in (partners, owners)]
    return pa.table([pa.array(hash64(keys), pa.int64()), pa.array(keys, pa.string()), *ints], schema=PARTNERS)


def count_partners(parts: dict[str, pa.Table], max_repeats: int) -> pa.Table:
    """cogroup fn: the occurrences of keys held by more than ``max_repeats`` distinct partners,
    as (row, key, n) hits."""
    t = parts["p"]
    if t.num_rows == 0:
        return HITS.empty_table()
    distinct = (
        t.group_by(["key", "partner"], use_threads=False)
        .aggregate([])
        .group_by("key", use_threads=False)
        .aggregate([("partner", "count")])
    )
    over = distinct.filter(pc.greater(distinct.column("partner_count"), max_repeats))
    if over.num_rows == 0:
        return HITS.empty_table()
    hits = t.join(over, "key", join_type="inner", use_threads=False)
    return pa.table(
        [hits.column("row"), hits.column("key"), hits.column("partner_count").cast(pa.int64())], schema=HITS
    )


def apply_hits(parts: dict[str, pa.Table], verdict: type[Stage]) -> pa.Table:
    """cogroup fn: the records of one partition through ``verdict(keys of their hits)``."""
    records, hits = parts["records"].drop_columns(["_row"]), parts["hits"]
    frequent = dict(zip(hits.column("key").to_pylist(), hits.column("n").to_pylist(), strict=True))
    return verdict(frequent)(records) if frequent else records


class CorpusPhase(Stage):
    """A rule that needs corpus-wide counts: occurrences of (key, partner) per record are counted
    over the whole stream, and records whose keys have more than ``max_repeats`` distinct partners
    go through ``verdict`` (a per-batch stage built from those keys)."""

    partners = staticmethod(caption_partners)
    verdict: ClassVar[type[Stage]] = Stage

    def __init__(self, max_repeats: int) -> None:
        self.max_repeats = max_repeats

    def apply(self, ds, rows: int, schema: pa.Schema):
        """The stream ``ds`` (``rows`` records, of ``schema``) with this rule applied."""
        from mm1data.ingest.synthetic import with_row_hash

        stream = self.streams[0]
        occurrences = ds.map_batches(type(self).partners, batch_format="pyarrow")
        n = partitions_for(rows * 4, ROWS_PER_PARTITION)
        hits = cogroup(
            {"p": occurrences}, {"p": "k"}, n, count_partners, (self.max_repeats,), {"p": PARTNERS}
        )
        records = ds.map_batches(with_row_hash, fn_args=(stream,), batch_format="pyarrow")
        return cogroup(
            {"records": records, "hits": hits},
            {"records": "_row", "hits": "row"},
            partitions_for(rows, ROWS_PER_PARTITION, ds.size_bytes()),  # ds is materialized
            apply_hits,
            (self.verdict,),
            {"records": schema.append(pa.field("_row", pa.int64())), "hits": HITS},
            stream="records",
        )

    def __call__(self, table: pa.Table) -> pa.Table:
        raise RuntimeError(f"{self.name} needs the whole corpus: run it through run_chain")


class CaptionRepeatsPhase(CorpusPhase):
    """Captions written for more than ``max_repeats`` distinct images (:class:`RepeatedCaptionFilter`)."""

    name: ClassVar[str] = "caption_repeats"
    streams: ClassVar[tuple[str, ...]] = ("caption",)
    partners = staticmethod(caption_partners)
    verdict = RepeatedCaptionFilter


class ImageUrlRepeatsPhase(CorpusPhase):
    """Image URLs used by more than ``max_repeats`` distinct docs (:class:`FrequentImageUrlFilter`)."""

    name: ClassVar[str] = "image_url_repeats"
    streams: ClassVar[tuple[str, ...]] = ("interleaved",)
    partners = staticmethod(url_partners)
    verdict = FrequentImageUrlFilter


def text_stages(cfg: FilterConfig) -> list[Stage]:
    """The text stack, cheapest-reject-first as FineWeb: language, Gopher repetition, Gopher
    quality, C4."""
    stages: list[Stage] = []
    if cfg.language.enabled:
        stages.append(LanguageFilter(cfg.language))
    if cfg.gopher_repetition.enabled:
        stages.append(GopherRepetitionFilter(cfg.gopher_repetition))
    if cfg.gopher_quality.enabled:
        stages.append(GopherQualityFilter(cfg.gopher_quality))
    if cfg.c4.enabled:
        stages.append(C4Filter(cfg.c4))
    return stages


def filter_stages(cfg: FilterConfig, stream: str) -> list[Stage]:
    """The configured filter chain for ``stream`` (``caption``, ``interleaved`` or ``text``)."""
    if stream == "text":
        return text_stages(cfg)
    if stream == "caption":
        stages: list[Stage] = []
        if cfg.image.enabled:
            stages.append(ImageFilter(cfg.image))
        if cfg.caption.enabled:
            stages.append(CaptionFilter(cfg.caption))
            if cfg.caption.max_repeats is not None:
                stages.append(CaptionRepeatsPhase(cfg.caption.max_repeats))
        return stages
    if stream == "interleaved":
        stages = [InterleavedImageFilter(cfg.image, cfg.interleaved)] if cfg.image.enabled else []
        if cfg.interleaved.max_image_url_repeats is not None:
            stages.append(ImageUrlRepeatsPhase(cfg.interleaved.max_image_url_repeats))
        if cfg.paragraph.enabled:
            stages.append(ParagraphFilter(cfg.paragraph))
        stages.append(InterleavedDocFilter(cfg.interleaved))
        if cfg.web_document.enabled:
            stages.append(WebDocumentFilter(cfg.web_document))
            if cfg.web_document.min_language_score is not None:  # OBELICS: LID >= 0.8 on web documents
                score = max(cfg.language.min_score, cfg.web_document.min_language_score)
                cfg = dataclasses.replace(cfg, language=dataclasses.replace(cfg.language, min_score=score))
        return [*stages, *text_stages(cfg)]
    raise ValueError(f"unknown stream {stream!r}")


def run_chain(ds, stages: Sequence[Stage], rows: int, schema: pa.Schema, timer: str | None = None):
    """Apply a chain to the Ray dataset ``ds`` of one stream (``rows`` records of ``schema``):
    per-batch stages fused in Ray tasks, each corpus phase as its two co-partitioned steps.
    ``timer`` names an actor that sums each stage's seconds (``mm1data filter`` reports them)."""
    pending: list[Stage] = []
    for stage in stages:
        if isinstance(stage, CorpusPhase):
            ds = apply_stages(ds, pending, timer).materialize() if pending else ds.materialize()
            pending = []
            ds = stage.apply(ds, rows, schema)
        else:
            pending.append(stage)
    return apply_stages(ds, pending, timer) if pending else ds
