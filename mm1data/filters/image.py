"""Image checks (Pillow, with a decompression-bomb limit) and OBELICS-style interleaved doc rules.

:func:`judge_image` judges one image from the format and size ingest recorded when it decoded it
(once; :func:`check_image` decodes images that arrive without them): an allowed format, shorter
side >= ``min_side`` (150 px, OBELICS), longer side <= ``max_side``, aspect ratio <= 3 (DataComp;
2 inside web documents, OBELICS) and at most ``max_pixels``. Caption pairs with a bad
image are dropped (:class:`ImageFilter`); inside an interleaved doc a bad image, or one rendered
smaller than 150 px, drops only that item into ``item_rejects`` (:class:`InterleavedImageFilter`).
:class:`InterleavedDocFilter` then applies the doc rules: 1-30 images, 10-2,000 words.
:class:`FrequentImageUrlFilter` removes image items whose URL occurs in more than
``max_image_url_repeats`` docs (counted over the whole corpus by
:func:`mm1data.filters.count_image_urls`).
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from typing import ClassVar

import numpy as np
import pyarrow as pa
from PIL import Image

from mm1data.config import ImageConfig, InterleavedConfig
from mm1data.filters.obelics import obelics_words
from mm1data.stages import Decision, Filter, Stage, rewrite_items


def judge_image(fmt: str | None, w: int, h: int, cfg: ImageConfig) -> tuple[str, float, str] | None:
    """``(reason, score, detail)`` for an image that breaks a rule, from its recorded format and
    size alone (ingest decoded it once and recorded them), None for a good one."""
    if (fmt or "") not in cfg.formats:
        return "image_format_not_allowed", 0.0, fmt or "unknown"
    if w * h > cfg.max_pixels:
        return "image_too_many_pixels", float(w * h), f"{w}x{h}"
    if min(w, h) < cfg.min_side:
        return "image_too_small", float(min(w, h)), f"{w}x{h}"
    if max(w, h) > cfg.max_side:
        return "image_too_large", float(max(w, h)), f"{w}x{h}"
    ratio = max(w, h) / max(1, min(w, h))
    if ratio > cfg.max_aspect_ratio:
        return "image_aspect_ratio_too_high", ratio, f"{w}x{h}"
    return None


def check_image(data: bytes | None, cfg: ImageConfig) -> tuple[str, float, str] | None:
    """``(reason, score, detail)`` for a bad encoded image, None for a good one: for images that
    reach the filter without the size ingest records (it decodes them, once, here)."""
    if not data:
        return "missing_image", 0.0, "no image bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = (img.format or "").lower()
                w, h = img.size
                early = judge_image(
                    fmt, w, h, dataclasses.replace(cfg, min_side=0, max_aspect_ratio=float("inf"))
                )
                if early is not None:
                    return early
                if cfg.decode:
                    img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return "image_too_many_pixels", 0.0, str(e)[:200]
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad image, not a crash
        return "undecodable_image", 0.0, re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(e).__name__}: {e}")[:200]
    return judge_image(fmt, w, h, cfg)


def image_verdict(image: bytes | None, fmt: str | None, w: int | None, h: int | None, cfg: ImageConfig):
    """The verdict on one image: from its recorded format and size, else by decoding it."""
    if image is not None and w is not None and h is not None and fmt is not None:
        return judge_image(fmt, w, h, cfg)
    return check_image(image, cfg)


class ImageFilter(Filter):
    """Drop caption pairs whose image fails :func:`check_image`."""

    name: ClassVar[str] = "image"
    streams: ClassVar[tuple[str, ...]] = ("caption",)

    def __init__(self, cfg: ImageConfig | None = None) -> None:
        self.cfg = cfg or ImageConfig()
        Image.MAX_IMAGE_PIXELS = self.cfg.max_pixels

    def decide(self, live: pa.Table) -> Decision:
        """Check every row's image."""
        cols = [live.column(c).to_pylist() for c in ("image", "format", "width", "height")]
        results = [image_verdict(*row, self.cfg) for row in zip(*cols, strict=True)]
        return Decision(
            keep=np.array([r is None for r in results], dtype=bool),
            reason=[r and r[0] for r in results],
            score=[r and r[1] for r in results],
            detail=[r and r[2] for r in results],
        )


def _rewrite_items(table: pa.Table, stage: str, judge) -> pa.Table:
    """Drop the image items of live interleaved docs for which ``judge(item)`` returns
    ``(reason, score, detail)``, appending those to ``item_rejects``."""

    def rewrite(item: dict) -> tuple[dict | None, list[dict]]:
        verdict = judge(item) if item["kind"] == "image" else None
        if verdict is None:
            return item, []
        reason, score, detail = verdict
        where = f"position {item.get('position')}: {item.get('url') or ''}"
        return None, [{"stage": stage, "reason": reason, "detail": f"{where} {detail}"[:300], "score": score}]

    return rewrite_items(table, rewrite)


def check_rendered(item: dict, cfg: InterleavedConfig) -> tuple[str, float, str] | None:
    """``(reason, score, detail)`` when an image item's rendered size (its ``<img width/height>``)
    is outside OBELICS's bounds; None when fine or unknown."""
    for side in ("rendered_width", "rendered_height"):
        value = item.get(side)
        if value is None:
            continue
        if cfg.min_rendered_side is not None and value < cfg.min_rendered_side:
            return "image_rendered_too_small", float(value), f"{side} {value}"
        if cfg.max_rendered_side is not None and value > cfg.max_rendered_side:
            return "image_rendered_too_large", float(value), f"{side} {value}"
    return None


class InterleavedImageFilter(Stage):
    """Remove bad image items from interleaved docs (into ``item_rejects``); the doc stays.
    ``doc`` sets the rules that differ for images in web documents (aspect ratio, rendered size)."""

    name: ClassVar[str] = "image"
    streams: ClassVar[tuple[str, ...]] = ("interleaved",)

    def __init__(self, cfg: ImageConfig | None = None, doc: InterleavedConfig | None = None) -> None:
        self.doc = doc or InterleavedConfig()
        self.cfg = cfg or ImageConfig()
        if self.doc.max_image_aspect_ratio is not None:
            self.cfg = dataclasses.replace(self.cfg, max_aspect_ratio=self.doc.max_image_aspect_ratio)
        Image.MAX_IMAGE_PIXELS = self.cfg.max_pixels

    def judge(self, item: dict) -> tuple[str, float, str] | None:
        """The first rule an image item fails, or None."""
        verdict = image_verdict(
            item["image"], item.get("format"), item.get("width"), item.get("height"), self.cfg
        )
        return verdict or check_rendered(item, self.doc)

    def __call__(self, table: pa.Table) -> pa.Table:
        return _rewrite_items(table, self.name, self.judge)


class FrequentImageUrlFilter(Stage):
    """Remove image items whose URL is in ``frequent`` (used by too many docs: logos, icons, ads)."""

    name: ClassVar[str] = "image_url_repeats"
    streams: ClassVar[tuple[str, ...]] = ("interleaved",)

    def __init__(self, frequent: dict[str, int]) -> None:
        self.frequent = frequent

    def __call__(self, table: pa.Table) -> pa.Table:
        def judge(item: dict) -> tuple[str, float, str] | None:
            n = self.frequent.get(item.get("url") or "")
            return None if n is None else ("frequent_image_url", float(n), f"in {n} docs")

        return _rewrite_items(table, self.name, judge)


class InterleavedDocFilter(Filter):
    """Doc rules after image and paragraph removal: ``min_images``..``max_images`` images,
    ``min_text_words``..``max_text_words`` words (counted as OBELICS does)."""

    name: ClassVar[str] = "interleaved_doc"
    streams: ClassVar[tuple[str, ...]] = ("interleaved",)

    def __init__(self, cfg: InterleavedConfig | None = None) -> None:
        self.cfg = cfg or InterleavedConfig()

    def decide(self, live: pa.Table) -> Decision:
        """Count images and words per doc."""
        import pyarrow.compute as pc

        items = live.column("items").combine_chunks()
        flat = pc.list_flatten(items)
        parents = np.asarray(pc.list_parent_indices(items))
        is_image = np.asarray(pc.equal(pc.struct_field(flat, "kind"), "image").fill_null(False))
        n_images = np.bincount(parents[is_image], minlength=live.num_rows)
        texts = pc.struct_field(flat, "text").to_pylist()
        n_words = np.zeros(live.num_rows, dtype=np.int64)
        for p, t in zip(parents, texts, strict=False):
            if t:
                n_words[p] += len(obelics_words(t))
        c = self.cfg
        verdicts: list[tuple[str, float] | None] = []
        for k, w in zip(n_images, n_words, strict=True):
            if k < c.min_images:
                verdicts.append(("too_few_images", float(k)))
            elif k > c.max_images:
                verdicts.append(("too_many_images", float(k)))
            elif w < c.min_text_words:
                verdicts.append(("too_little_text", float(w)))
            elif c.max_text_words is not None and w > c.max_text_words:
                verdicts.append(("too_much_text", float(w)))
            else:
                verdicts.append(None)
        reason = [v and v[0] for v in verdicts]
        score = [v and v[1] for v in verdicts]
        return Decision(np.array([r is None for r in reason], dtype=bool), reason, score)
