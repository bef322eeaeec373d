"""C4 heuristics (Raffel et al. 2020, Sec. 2.2), rule for rule as datatrove's ``C4QualityFilter``.

Lines are judged one by one: a line with a word over ``max_word_length`` chars, without terminal
punctuation (or ending in "..."), with fewer than ``min_words_per_line`` words, mentioning
"javascript" or a cookie/terms-of-use phrase does not count. A doc is dropped when a counted line
has "lorem ipsum" (``lorem_ipsum``) or a curly bracket (``curly_bracket``), or when the counted
lines hold fewer than ``min_sentences`` sentences (``too_few_sentences``; ``detail`` says how many
lines each line rule set aside).

Choice: C4 and datatrove also *delete* the set-aside lines from the text. mm1data drops or keeps
whole docs by default (text kept verbatim, the same rule for text docs and interleaved docs, whose
text items line up with images); ``C4Config.remove_lines`` turns line deletion on for text docs.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import ClassVar

import numpy as np
import pyarrow as pa

from mm1data.config import C4Config
from mm1data.filters.words import count_sentences, table_texts
from mm1data.stages import Decision, Filter

CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)


class C4Filter(Filter):
    """C4 line rules and doc rules; see the module docstring."""

    name: ClassVar[str] = "c4"
    streams: ClassVar[tuple[str, ...]] = ("text", "interleaved")

    def __init__(self, cfg: C4Config | None = None) -> None:
        self.cfg = cfg or C4Config()

    def check(self, text: str) -> tuple[tuple[str, float, str] | None, list[str]]:
        """``((reason, score, detail) or None, kept lines)`` for one text."""
        c = self.cfg
        removed: Counter = Counter()
        kept: list[str] = []
        sentences = 0
        for line in text.splitlines():
            line = line.strip()
            words = line.split()
            if c.max_word_length != -1 and any(len(w) > c.max_word_length for w in words):
                removed["too_long_word"] += 1
                continue
            if c.remove_citations:
                line = CITATION_RE.sub("", line)
            if c.terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
                removed["no_terminal_punct"] += 1
                continue
            if len(words) < c.min_words_per_line:
                removed["too_few_words"] += 1
                continue
            low = line.lower()
            if c.lorem_ipsum and "lorem ipsum" in low:
                return ("lorem_ipsum", 1.0, line[:200]), kept
            if c.javascript and "javascript" in low:
                removed["javascript"] += 1
                continue
            if c.curly_bracket and "{" in line:
                return ("curly_bracket", 1.0, line[:200]), kept
            if c.policy and any(p in low for p in POLICY_SUBSTRINGS):
                removed["policy"] += 1
                continue
            sentences += count_sentences(line)
            kept.append(line)
        if sentences < c.min_sentences:
            detail = ", ".join(f"{k}={v}" for k, v in sorted(removed.items()))
            return (
                "too_few_sentences",
                float(sentences),
                f"kept {len(kept)} lines; set aside: {detail}",
            ), kept
        return None, kept

    def decide(self, live: pa.Table) -> Decision:
        """Apply the rules to every row's text."""
        results = [self.check(t)[0] for t in table_texts(live)]
        return Decision(
            keep=np.array([r is None for r in results], dtype=bool),
            reason=[r and r[0] for r in results],
            score=[r and r[1] for r in results],
            detail=[r and r[2] for r in results],
        )

    def __call__(self, table: pa.Table) -> pa.Table:
        table = super().__call__(table)
        if not (self.cfg.remove_lines and "text" in table.column_names):
            return table
        from mm1data.stages import live_mask

        live = live_mask(table)
        texts = table.column("text").to_pylist()
        new = [("\n".join(self.check(t or "")[1]) if live[i] else t) for i, t in enumerate(texts)]
        j = table.schema.get_field_index("text")
        return table.set_column(j, table.schema.field(j), pa.array(new, type=pa.string()))
