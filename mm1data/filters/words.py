"""Word and sentence splitting shared by the text filters: compiled once, spaCy-compatible enough.

datatrove's English rules run on spaCy's tokenizer (punctuation split off as its own tokens,
contractions split, URLs and numbers kept whole). These regular expressions reproduce that
segmentation closely at a fraction of the cost, so the Gopher ratios mean the same thing here.
"""

from __future__ import annotations

import re
from functools import lru_cache

WORD_RE = re.compile(
    r"""
    (?:https?://|www\.)\S+?(?=[.,;:!?)\]'"]*(?:\s|$))      # URLs stay whole
    | (?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|vs|Inc|Ltd|Co|Corp|No|Vol)\.(?=\s)
    | (?:[^\W\d_]\.){2,} | [^\W\d_]\.(?=\s)                 # abbreviations and initials: U.S., J.
    | ['’](?:s|re|ve|ll|d|m)\b                              # John|'s (split off by _CONTRACTION)
    | \w(?:[^\s\-/—–…]*\w)?                                       # a word: inner punctuation kept
    | (?<!\S)-\d+(?:[.,]\d+)*(?![^\W_])                     # negative numbers
    | \.\.+ | … | '' | --+                                  # multi-character marks
    | [^\w\s]                                              # any other symbol is its own token
    """,
    re.VERBOSE,
)
"""One token per match: words, numbers, URLs, contraction parts and single punctuation marks."""

_CONTRACTION = re.compile(r"(?<=\w)(n['’]t|['’](?:s|re|ve|ll|d|m))\b")
"""Contraction suffixes, split from their word before tokenizing (do|n't, John|'s), as spaCy does."""

SENTENCE_END_RE = re.compile(r"[.!?…]+[\"'”’)\]]*\s+(?=[^\W_]|[\"'“‘(\[])")
"""A sentence boundary inside a line: terminal punctuation, optional closing quotes, then space."""

PUNCTUATION = frozenset(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(chr(x) for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b))
)
"""datatrove's PUNCTUATION characters: a token made only of these is a symbol, not a word."""


@lru_cache(maxsize=256)
def split_words(text: str) -> list[str]:
    """Tokens of ``text`` (words and punctuation marks), in order. Memoized for a batch's worth of
    docs (256, the stage chain's batch), so the quality and repetition filters tokenize each text
    once (do not mutate the list); 1,024 token lists of 3,000-word docs would hold ~170 MiB."""
    return WORD_RE.findall(_CONTRACTION.sub(r" \1", text))


def is_symbol(token: str) -> bool:
    """True when ``token`` has no character outside :data:`PUNCTUATION`."""
    return all(ch in PUNCTUATION for ch in token)


def count_sentences(line: str) -> int:
    """Number of sentences in one line (0 for a blank line)."""
    if not line.strip():
        return 0
    return 1 + len(SENTENCE_END_RE.findall(line.strip()))


def table_texts(table) -> list[str]:
    """The text of each row of a stream batch: ``text`` for text docs, the text items of an
    interleaved doc joined by blank lines (nulls become "")."""
    if "text" in table.column_names:
        return [t or "" for t in table.column("text").to_pylist()]
    if "items" in table.column_names:
        import pyarrow.compute as pc

        items = table.column("items").combine_chunks()
        flat = pc.list_flatten(items)
        parents = pc.list_parent_indices(items).to_pylist()
        kinds = pc.struct_field(flat, "kind").to_pylist()
        texts = pc.struct_field(flat, "text").to_pylist()
        parts: list[list[str]] = [[] for _ in range(table.num_rows)]
        for doc, kind, text in zip(parents, kinds, texts, strict=False):
            if kind == "text" and text:
                parts[doc].append(text)
        return ["\n\n".join(p) for p in parts]
    raise ValueError("batch has neither a text nor an items column")
