"""OBELICS text rules for interleaved web documents (Laurençon et al. 2023, Sec. 3.3, App. A.2).

Two levels, as in huggingface/OBELICS ``obelics/processors/web_document_filtering.py``:

- :class:`ParagraphFilter` (node level): every paragraph of every text item (text split on blank
  lines) is checked for its word count, character and word repetition, special characters, stop
  words and punctuation; failing paragraphs leave the document (one ``item_rejects`` entry per
  text item and reason, with the count and the first paragraph), the document stays;
- :class:`WebDocumentFilter` (document level): the same ratios on the whole text with the
  document thresholds; a failing document is rejected.

The measures follow OBELICS's definitions (BigScience's ROOTS filters), written afresh:

- words: whitespace-separated tokens, lower-cased, with leading and trailing non-letters
  (punctuation, digits, symbols) stripped, empty ones dropped;
- character repetition: of the character n-grams, the share of occurrences taken by the
  ``min(⌊√distinct⌋, distinct − singletons)`` most frequent ones;
- word repetition: the share of word n-gram occurrences that belong to an n-gram seen more than once;
- special characters: the share of characters that are not letters (spaces, digits, punctuation,
  symbols and emoji count, as OBELICS's list has them);
- stop words: the share of words in :data:`STOP_WORDS`;
- punctuation: the share of ``. , ; : ? !`` among word-and-punctuation tokens; a paragraph with
  fewer than ``min_words_for_punctuation`` tokens passes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import ClassVar

import numpy as np
import pyarrow as pa

from mm1data.config import ParagraphConfig, WebDocumentConfig
from mm1data.filters.words import table_texts
from mm1data.stages import Decision, Filter, Stage, rewrite_items

STOP_WORDS = frozenset(
    """
    a about above across after afterwards again against ago all almost alone along already also
    although always am among amongst an and another any anybody anyhow anyone anything anyway
    anywhere are around as at away back be became because become becomes been before beforehand
    behind being below beside besides between beyond both but by can cannot could did do does
    doing done down due during each either else elsewhere enough etc even ever every everybody
    everyone everything everywhere except few for former formerly from further had has have
    having he hence her here hereafter hereby herein hers herself him himself his how however i
    if in indeed inside instead into is it its itself just last latter least less like made
    make many may me meanwhile might mine more moreover most mostly much must my myself near
    nearly neither never nevertheless next no nobody none noone nor not nothing now nowhere of
    off often on once one only onto or other others otherwise our ours ourselves out outside
    over own per perhaps please quite rather really same several she should since so some
    somebody somehow someone something sometime sometimes somewhere still such than that the
    their theirs them themselves then thence there thereafter thereby therefore therein these
    they this those though through throughout thru thus to together too toward towards under
    unless until up upon us very via was we well were what whatever when whence whenever where
    whereas whereby wherever whether which while who whoever whole whom whose why will with
    within without would yet you your yours yourself yourselves
    aren't can't couldn't didn't doesn't don't hadn't hasn't haven't isn't it's i'm i've i'll
    i'd let's shouldn't that's there's they're wasn't we're weren't won't wouldn't you're
    you've he's she's what's who's here's
    """.split()
)
"""English function words (articles, pronouns, prepositions, conjunctions, auxiliaries,
determiners, frequent adverbs and their contractions): mm1data's own list, standing in for
OBELICS's ``STOPWORDS``."""

PUNCTUATION = ".,;:?!"
_PUNCT_TOKENS = re.compile(r"[\w']+|[.,;:?!]")
_EDGES = re.compile(r"^[\W\d_]+|[\W\d_]+$")
_LETTER = re.compile(r"[^\W\d_]")


def obelics_words(text: str) -> list[str]:
    """Lower-cased words with leading/trailing non-letters stripped (empty ones dropped)."""
    out = []
    for token in text.lower().split():
        word = _EDGES.sub("", token)
        if word:
            out.append(word)
    return out


def char_repetition_ratio(text: str, n: int) -> float:
    """Share of character n-gram occurrences taken by the most repeated n-grams (see module doc)."""
    if len(text) < n:
        return 0.0
    freqs = sorted(Counter(text[i : i + n] for i in range(len(text) - n + 1)).values(), reverse=True)
    singletons = sum(1 for f in freqs if f == 1)
    top = min(int(math.sqrt(len(freqs))), len(freqs) - singletons)
    return sum(freqs[:top]) / sum(freqs)


def word_repetition_ratio(words: list[str], n: int) -> float:
    """Share of word n-gram occurrences whose n-gram occurs more than once."""
    if len(words) < n:
        return 0.0
    freqs = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)).values()
    return sum(f for f in freqs if f > 1) / sum(freqs)


def special_char_ratio(text: str) -> float:
    """Share of characters that are not letters."""
    return 1.0 - len(_LETTER.findall(text)) / len(text) if text else 0.0


def stop_word_ratio(words: list[str]) -> float:
    """Share of words that are :data:`STOP_WORDS`."""
    return sum(1 for w in words if w in STOP_WORDS) / len(words) if words else 0.0


def punctuation_ratio(text: str, min_tokens: int = 0) -> float:
    """Share of ``. , ; : ? !`` among word and punctuation tokens; 1.0 below ``min_tokens`` tokens."""
    tokens = _PUNCT_TOKENS.findall(text)
    if not tokens:
        return 0.0
    if min_tokens > 0 and len(tokens) < min_tokens:
        return 1.0
    return sum(1 for t in tokens if t in PUNCTUATION) / len(tokens)


def text_verdict(text: str, cfg: ParagraphConfig | WebDocumentConfig) -> tuple[str, float] | None:
    """The first OBELICS ratio rule ``text`` fails as ``(reason, measured value)``, or None.

    Word-count bounds apply only with a :class:`ParagraphConfig` (the document's are the doc filter's).
    """
    words = obelics_words(text)
    if isinstance(cfg, ParagraphConfig):
        if cfg.min_words is not None and len(words) < cfg.min_words:
            return "too_few_words", float(len(words))
        if cfg.max_words is not None and len(words) > cfg.max_words:
            return "too_many_words", float(len(words))
    if cfg.max_char_repetition is not None:
        r = char_repetition_ratio(text, cfg.char_repetition_length)
        if r > cfg.max_char_repetition:
            return "char_repetition", r
    if cfg.max_word_repetition is not None:
        r = word_repetition_ratio(words, cfg.word_repetition_length)
        if r > cfg.max_word_repetition:
            return "word_repetition", r
    if cfg.max_special_chars is not None:
        r = special_char_ratio(text)
        if r > cfg.max_special_chars:
            return "special_characters", r
    if cfg.min_stop_words is not None:
        r = stop_word_ratio(words)
        if r < cfg.min_stop_words:
            return "few_stop_words", r
    if cfg.min_punctuation is not None:
        min_tokens = cfg.min_words_for_punctuation if isinstance(cfg, ParagraphConfig) else 0
        r = punctuation_ratio(text, min_tokens)
        if r < cfg.min_punctuation:
            return "little_punctuation", r
    return None


class ParagraphFilter(Stage):
    """Remove paragraphs that fail the OBELICS node-level rules from interleaved docs' text items;
    a text item with no paragraph left is removed. Reasons are ``paragraph_<rule>``."""

    name: ClassVar[str] = "paragraph"
    streams: ClassVar[tuple[str, ...]] = ("interleaved",)

    def __init__(self, cfg: ParagraphConfig | None = None) -> None:
        self.cfg = cfg or ParagraphConfig()

    def filter_text(self, text: str) -> tuple[str | None, dict[str, tuple[int, float, str]]]:
        """(kept paragraphs joined by blank lines or None, {reason: (count, first score, first
        paragraph)}) for one text item."""
        kept: list[str] = []
        dropped: dict[str, tuple[int, float, str]] = {}
        for paragraph in text.split("\n\n"):
            if not paragraph.strip():
                continue
            verdict = text_verdict(paragraph, self.cfg)
            if verdict is None:
                kept.append(paragraph)
                continue
            reason, score = verdict
            n, first_score, first = dropped.get(reason, (0, score, paragraph))
            dropped[reason] = (n + 1, first_score, first)
        return ("\n\n".join(kept) or None), dropped

    def rewrite(self, item: dict) -> tuple[dict | None, list[dict]]:
        """A text item with its failing paragraphs removed (None when none is left), and one
        item reject per reason."""
        if item["kind"] != "text" or not item.get("text"):
            return item, []
        text, dropped = self.filter_text(item["text"])
        if not dropped:
            return item, []
        rejects = [
            {
                "stage": self.name,
                "reason": f"paragraph_{reason}",
                "detail": f"position {item.get('position')}: {n} paragraph(s), first: {first[:120]!r}",
                "score": float(score),
            }
            for reason, (n, score, first) in dropped.items()
        ]
        return (None if text is None else {**item, "text": text}), rejects

    def __call__(self, table: pa.Table) -> pa.Table:
        return rewrite_items(table, self.rewrite)


class WebDocumentFilter(Filter):
    """Reject interleaved docs whose whole text fails an OBELICS document-level ratio rule."""

    name: ClassVar[str] = "web_document"
    streams: ClassVar[tuple[str, ...]] = ("interleaved",)

    def __init__(self, cfg: WebDocumentConfig | None = None) -> None:
        self.cfg = cfg or WebDocumentConfig()

    def decide(self, live: pa.Table) -> Decision:
        """Check every doc's text."""
        verdicts = [text_verdict(t, self.cfg) for t in table_texts(live)]
        return Decision(
            keep=np.array([v is None for v in verdicts], dtype=bool),
            reason=[None if v is None else v[0] for v in verdicts],
            score=[None if v is None else v[1] for v in verdicts],
        )
