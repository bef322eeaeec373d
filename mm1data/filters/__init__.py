"""Filters: one module per family, chained per stream by :func:`filter_stages`.

Most filters are pure per-batch stages. Two rules need the whole corpus (a caption repeated
across many images; an image URL used by many docs): they are :class:`CorpusPhase` entries in
the chain, and :func:`apply_filters` runs their counting phase (a Ray Data group-by) on the
stream as filtered so far, then applies the filter they return.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import ClassVar

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
from mm1data.stages import Stage, live_mask

__all__ = ["CorpusPhase", "apply_filters", "filter_stages", "count_caption_repeats", "count_image_urls"]


class CorpusPhase(Stage):
    """A rule that needs corpus-wide counts: :meth:`prepare` counts over a dataset and returns
    the per-batch stage to apply. Calling it on a batch directly is an error."""

    def prepare(self, ds) -> Stage:
        """Count over ``ds`` (a Ray dataset of the stream) and return the filter stage."""
        raise NotImplementedError

    def __call__(self, table: pa.Table) -> pa.Table:
        raise RuntimeError(f"{self.name} needs its counting phase first: run it through apply_filters")


def _caption_keys(table: pa.Table) -> pa.Table:
    """(key, image) per caption of live pairs: normalized caption text and the image identity."""
    live = live_mask(table)
    keys, images = [], []
    ids = table.column("id").to_pylist()
    shas = table.column("image_sha256").to_pylist()
    for i, caps in enumerate(table.column("captions").to_pylist()):
        if live[i]:
            for c in caps or []:
                keys.append(normalize_caption(c["text"] or ""))
                images.append(shas[i] or ids[i])
    return pa.table({"key": pa.array(keys, pa.string()), "image": pa.array(images, pa.string())})


def _image_urls(table: pa.Table) -> pa.Table:
    """(key, image) = (image URL, doc id) per image item of live interleaved docs."""
    live = pa.array(live_mask(table))
    table = table.filter(live)
    items = table.column("items").combine_chunks()
    flat = pc.list_flatten(items)
    docs = pc.take(table.column("id"), pc.list_parent_indices(items))
    is_img = pc.and_(
        pc.equal(pc.struct_field(flat, "kind"), "image"), pc.is_valid(pc.struct_field(flat, "url"))
    )
    urls = pc.struct_field(flat, "url")
    return pa.table({"key": pc.filter(urls, is_img), "image": pc.filter(docs, is_img)})


def _over(counts: pa.Table, max_repeats: int) -> pa.Table:
    """Rows of a (key, count()) table whose count exceeds ``max_repeats``, as (key, n)."""
    n = counts.column("count()")
    keep = pc.greater(n, max_repeats)
    return pa.table({"key": pc.filter(counts.column("key"), keep), "n": pc.filter(n, keep)})


def _frequent(ds, explode, max_repeats: int) -> dict[str, int]:
    """Keys that occur with more than ``max_repeats`` distinct partners (two Ray group-bys)."""
    pairs = ds.map_batches(explode, batch_format="pyarrow")
    distinct = pairs.groupby(["key", "image"]).count()
    per_key = distinct.groupby("key").count()
    over = per_key.map_batches(_over, fn_args=(max_repeats,), batch_format="pyarrow")
    return {row["key"]: int(row["n"]) for row in over.take_all()}


def count_caption_repeats(ds, max_repeats: int) -> dict[str, int]:
    """Normalized captions written for more than ``max_repeats`` distinct images, with the count."""
    return _frequent(ds, _caption_keys, max_repeats)


def count_image_urls(ds, max_repeats: int) -> dict[str, int]:
    """Image URLs used by more than ``max_repeats`` distinct interleaved docs, with the count."""
    return _frequent(ds, _image_urls, max_repeats)


class CaptionRepeatsPhase(CorpusPhase):
    """Count caption repeats, then :class:`RepeatedCaptionFilter`."""

    name: ClassVar[str] = "caption_repeats"
    streams: ClassVar[tuple[str, ...]] = ("caption",)

    def __init__(self, max_repeats: int) -> None:
        self.max_repeats = max_repeats

    def prepare(self, ds) -> Stage:
        return RepeatedCaptionFilter(count_caption_repeats(ds, self.max_repeats))


class ImageUrlRepeatsPhase(CorpusPhase):
    """Count image URL repeats, then :class:`FrequentImageUrlFilter`."""

    name: ClassVar[str] = "image_url_repeats"
    streams: ClassVar[tuple[str, ...]] = ("interleaved",)

    def __init__(self, max_repeats: int) -> None:
        self.max_repeats = max_repeats

    def prepare(self, ds) -> Stage:
        return FrequentImageUrlFilter(count_image_urls(ds, self.max_repeats))


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


def _apply_one(table: pa.Table, stage: Stage) -> pa.Table:
    """Ray task body for one stage (timed runs): set up, then apply."""
    stage.setup()
    return stage(table)


def run_stages(ds, stages: Sequence[Stage], timings: dict[str, float] | None = None):
    """Apply a chain to a Ray dataset: corpus phases count first. Without ``timings`` the stages
    run fused on an actor pool (models load once per actor); with ``timings`` every stage runs as
    its own Ray task job, materialized, and its wall time is recorded under its name."""
    from mm1data.runners.pipeline import apply_stages

    pending: list[Stage] = []
    for stage in stages:
        if isinstance(stage, CorpusPhase):
            ds = apply_stages(ds, pending).materialize() if pending else ds.materialize()
            pending = []
            t0 = time.perf_counter()
            stage = stage.prepare(ds)
            if timings is not None:
                timings[stage.name + ":count"] = time.perf_counter() - t0
        if timings is None:
            pending.append(stage)
        else:
            t0 = time.perf_counter()
            ds = ds.map_batches(
                _apply_one, fn_args=(stage,), batch_size=256, batch_format="pyarrow"
            ).materialize()
            timings[stage.name] = timings.get(stage.name, 0.0) + time.perf_counter() - t0
    return apply_stages(ds, pending) if pending else ds


def apply_filters(
    streams: dict, cfg: FilterConfig, timings: dict[str, dict[str, float]] | None = None
) -> dict:
    """Filter every stream (``{stream: ray.data.Dataset}``) with its chain. Rejected rows stay in
    the datasets with ``reject`` filled; the caller splits kept from rejects."""
    out = {}
    for stream, ds in streams.items():
        t = None if timings is None else timings.setdefault(stream, {})
        out[stream] = run_stages(ds, filter_stages(cfg, stream), t)
    return out
