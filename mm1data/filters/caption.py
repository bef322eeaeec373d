"""Caption rules: each caption of a pair is judged on its own; bad captions are removed from the
pair's ``captions`` list, and the pair is dropped only when none is left. The pair's reject then
carries the most common caption reason (ties: rule order), and ``detail`` lists every caption's.

Rules, in order: alt-text boilerplate (a file name such as ``IMG_1234.jpg``, a bare URL or a
caption containing one, a generic word such as "image" / "photo", all-caps spam), word count
(``min_words``..``max_words``), language (fastText lid.176). Captions repeated across more than
``max_repeats`` distinct images are removed by :class:`RepeatedCaptionFilter`, after a global
count (:func:`mm1data.filters.count_caption_repeats`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import ClassVar

import numpy as np
import pyarrow as pa

from mm1data.config import CaptionConfig
from mm1data.filters.language import LanguageIdentifier
from mm1data.stages import Stage, live_mask, reject_rows

FILENAME_RE = re.compile(
    r"^\s*(?:[\w\-. ]*\.(?:jpe?g|png|gif|webp|bmp|tiff?|heic)"  # IMG_1234.jpg, my photo.png
    r"|(?:img|dsc|dscn|dcim|pxl|photo|image)[_\- ]?\d+\w*)\s*$",  # IMG_1234, DSC01234
    re.IGNORECASE,
)
URL_RE = re.compile(r"https?://|www\.\w|\b\w+\.(?:com|net|org|jpg|png)/", re.IGNORECASE)
GENERIC_RE = re.compile(
    r"^\W*(?:an? |the )?(?:image|photo|photograph|picture|pic|img|untitled|thumbnail|placeholder|logo|icon|"
    r"banner|screenshot|default|null|none|no description|alt|alt text)s?\W*\d*\W*$",
    re.IGNORECASE,
)
_NON_ALNUM = re.compile(r"[\W_]+")


def normalize_caption(text: str) -> str:
    """Lower case, punctuation and runs of spaces collapsed: the key for repeat counting."""
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def is_all_caps_spam(text: str) -> bool:
    """Three or more words and every letter upper case (e.g. "BUY NOW FREE SHIPPING")."""
    letters = [c for c in text if c.isalpha()]
    return len(text.split()) >= 3 and len(letters) >= 8 and all(c.isupper() for c in letters)


class CaptionFilter(Stage):
    """Remove bad captions from each pair; drop pairs left with none; annotate the language."""

    name: ClassVar[str] = "caption"
    streams: ClassVar[tuple[str, ...]] = ("caption",)

    def __init__(self, cfg: CaptionConfig | None = None) -> None:
        self.cfg = cfg or CaptionConfig()
        self.lid: LanguageIdentifier | None = None

    def setup(self) -> None:
        """Load the language model once per worker (when language ID is on)."""
        if self.cfg.language.enabled and self.lid is None:
            self.lid = LanguageIdentifier()

    def check(self, text: str) -> tuple[str | None, float | None, tuple[str, float] | None]:
        """``(reason or None, score, (language, score) or None)`` for one caption."""
        c = self.cfg
        text = text or ""
        if c.boilerplate:
            if FILENAME_RE.match(text):
                return "caption_file_name", None, None
            if URL_RE.search(text):
                return "caption_url", None, None
            if GENERIC_RE.match(text):
                return "caption_generic", None, None
            if is_all_caps_spam(text):
                return "caption_all_caps", None, None
        n = len(text.split())
        if n < c.min_words:
            return "caption_too_short", float(n), None
        if n > c.max_words:
            return "caption_too_long", float(n), None
        if c.language.enabled:
            self.setup()
            assert self.lid is not None
            lang, score = self.lid.predict(text)
            wanted = c.language.languages
            if wanted and lang not in wanted:
                return "caption_wrong_language", score, (lang, score)
            if score < c.language.min_score:
                return "caption_low_language_score", score, (lang, score)
            return None, None, (lang, score)
        return None, None, None

    def __call__(self, table: pa.Table) -> pa.Table:
        live = live_mask(table)
        captions = table.column("captions").to_pylist()
        langs = table.column("language").to_pylist()
        lscores = table.column("language_score").to_pylist()
        n = table.num_rows
        drop = np.zeros(n, dtype=bool)
        reason: list[str | None] = [None] * n
        score: list[float | None] = [None] * n
        detail: list[str | None] = [None] * n
        for i in np.flatnonzero(live):
            kept, why, first_lang = [], [], None
            for cap in captions[i] or []:
                r, s, lang = self.check(cap["text"])
                if r is None:
                    kept.append(cap)
                    first_lang = first_lang or lang
                else:
                    why.append((r, s))
            captions[i] = kept
            if not kept:
                drop[i] = True
                counts = Counter(r for r, _ in why) if why else Counter({"no_caption": 1})
                reason[i] = counts.most_common(1)[0][0]
                score[i] = next((s for r, s in why if r == reason[i]), None)
                detail[i] = "; ".join(r for r, _ in why)[:300] or "no captions"
            elif first_lang:
                langs[i], lscores[i] = first_lang
        j = table.schema.get_field_index("captions")
        table = table.set_column(
            j, table.schema.field(j), pa.array(captions, type=table.schema.field(j).type)
        )
        for name, values, typ in (
            ("language", langs, pa.string()),
            ("language_score", lscores, pa.float32()),
        ):
            k = table.schema.get_field_index(name)
            table = table.set_column(k, table.schema.field(k), pa.array(values, type=typ))
        return reject_rows(table, drop, self.name, reason, score, detail)


class RepeatedCaptionFilter(Stage):
    """Remove captions whose normalized text is in ``frequent`` (written for too many distinct
    images); drop pairs left with none (reason ``repeated_caption``)."""

    name: ClassVar[str] = "caption_repeats"
    streams: ClassVar[tuple[str, ...]] = ("caption",)

    def __init__(self, frequent: dict[str, int]) -> None:
        self.frequent = frequent

    def __call__(self, table: pa.Table) -> pa.Table:
        if not self.frequent:
            return table
        live = live_mask(table)
        captions = table.column("captions").to_pylist()
        n = table.num_rows
        drop = np.zeros(n, dtype=bool)
        score: list[float | None] = [None] * n
        detail: list[str | None] = [None] * n
        for i in np.flatnonzero(live):
            caps = captions[i] or []
            kept = [c for c in caps if normalize_caption(c["text"] or "") not in self.frequent]
            if len(kept) != len(caps):
                captions[i] = kept
                if not kept:
                    key = normalize_caption(caps[0]["text"] or "")
                    drop[i], score[i], detail[i] = True, float(self.frequent[key]), key[:200]
        j = table.schema.get_field_index("captions")
        table = table.set_column(
            j, table.schema.field(j), pa.array(captions, type=table.schema.field(j).type)
        )
        return reject_rows(table, drop, self.name, "repeated_caption", score, detail)
