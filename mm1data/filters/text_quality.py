"""Gopher quality and repetition rules (Rae et al. 2021, MassiveText), as datatrove implements them.

The rules, their order and their reasons follow datatrove's ``GopherQualityFilter`` and
``GopherRepetitionFilter`` (the first failing rule decides). What differs is the cost: words come
from one compiled regex (:mod:`mm1data.filters.words`), and the n-gram statistics of a whole batch
are computed at once on integer word ids with numpy (rolling 64-bit n-gram hashes, one sort per n),
instead of joining and hashing n-gram strings doc by doc.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np
import pyarrow as pa

from mm1data.config import GopherQualityConfig, GopherRepetitionConfig
from mm1data.filters.words import is_symbol, split_words, table_texts
from mm1data.stages import Decision, Filter

_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")
_HAS_ALPHA = re.compile(r"[^\W\d_]")
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)


def _decide(n: int, verdicts: list[tuple[str, float] | None]) -> Decision:
    """A :class:`Decision` from per-row ``(reason, score)`` or None (keep)."""
    keep = np.array([v is None for v in verdicts], dtype=bool)
    return Decision(
        keep=keep,
        reason=[None if v is None else v[0] for v in verdicts],
        score=[None if v is None else v[1] for v in verdicts],
    )


class GopherQualityFilter(Filter):
    """Gopher quality rules: word count, mean word length, symbol-to-word ratio, bullet and
    ellipsis lines, alphabetic-word ratio, stop words."""

    name: ClassVar[str] = "gopher_quality"
    streams: ClassVar[tuple[str, ...]] = ("text", "interleaved")

    def __init__(self, cfg: GopherQualityConfig | None = None) -> None:
        self.cfg = cfg or GopherQualityConfig()
        self.stop_words = frozenset(self.cfg.stop_words)

    def check(self, text: str) -> tuple[str, float] | None:
        """The first rule ``text`` fails, as ``(reason, measured value)``, or None."""
        c = self.cfg
        words = split_words(text)
        n_words = len(words)
        word_lens = [len(w) for w in words if not is_symbol(w)]
        n_real = len(word_lens)
        if c.min_doc_words is not None and n_real < c.min_doc_words:
            return "too_few_words", float(n_real)
        if c.max_doc_words is not None and n_real > c.max_doc_words:
            return "too_many_words", float(n_real)
        mean_len = sum(word_lens) / n_real if n_real else 0.0
        if c.min_avg_word_length is not None and mean_len < c.min_avg_word_length:
            return "short_mean_word_length", mean_len
        if c.max_avg_word_length is not None and mean_len > c.max_avg_word_length:
            return "long_mean_word_length", mean_len
        if n_words == 0:
            return "too_few_words", 0.0
        if c.max_symbol_word_ratio is not None:
            r = text.count("#") / n_words
            if r > c.max_symbol_word_ratio:
                return "too_many_hashes", r
            r = (text.count("...") + text.count("…")) / n_words
            if r > c.max_symbol_word_ratio:
                return "too_many_ellipses", r
        lines = text.splitlines() or [""]
        if c.max_bullet_lines_ratio is not None:
            r = sum(s.lstrip().startswith(("•", "-")) for s in lines) / len(lines)
            if r > c.max_bullet_lines_ratio:
                return "too_many_bullet_lines", r
        if c.max_ellipsis_lines_ratio is not None:
            r = sum(s.rstrip().endswith(("...", "…")) for s in lines) / len(lines)
            if r > c.max_ellipsis_lines_ratio:
                return "too_many_ellipsis_lines", r
        if c.min_alpha_words_ratio is not None:
            has_alpha = _HAS_ALPHA.search
            r = sum(1 for w in words if has_alpha(w)) / n_words
            if r < c.min_alpha_words_ratio:
                return "too_few_alpha_words", r
        if c.min_stop_words is not None:
            n_stop = len(self.stop_words.intersection(words))
            if n_stop < c.min_stop_words:
                return "too_few_stop_words", float(n_stop)
        return None

    def decide(self, live: pa.Table) -> Decision:
        """Apply the rules to every row's text."""
        return _decide(live.num_rows, [self.check(t) for t in table_texts(live)])


def _dup_elements(parts: list[str]) -> tuple[int, int]:
    """(number of elements seen before, their total characters), as datatrove's ``find_duplicates``."""
    seen: set[str] = set()
    n = chars = 0
    for p in parts:
        if p in seen:
            n += 1
            chars += len(p)
        else:
            seen.add(p)
    return n, chars


class BatchNgrams:
    """Word n-gram statistics for a batch of docs, on integer word ids.

    ``ids``/``lens`` are the word ids and lengths of all docs end to end; ``start[d]:end[d]`` is
    doc ``d``'s slice. An n-gram is identified by a rolling 64-bit hash of its word ids.
    """

    def __init__(self, docs_words: list[list[str]]) -> None:
        vocab: dict[str, int] = {}
        ids: list[int] = []
        for words in docs_words:
            ids.extend([vocab.setdefault(w, len(vocab)) for w in words])
        sizes = np.array([len(w) for w in docs_words], dtype=np.int64)
        self.end = np.cumsum(sizes)
        self.start = self.end - sizes
        self.ids = np.array(ids, dtype=np.uint64) + np.uint64(1)
        lens = np.array([len(w) for words in docs_words for w in words], dtype=np.int64)
        self.len_cum = np.concatenate([[0], np.cumsum(lens)])
        self.doc_of = np.repeat(np.arange(len(docs_words)), sizes)
        self._hash = {1: self.ids}

    def hashes(self, n: int) -> np.ndarray:
        """Hash of the n-gram starting at every position (positions past a doc's end are junk)."""
        if n not in self._hash:
            prev = self.hashes(n - 1)
            h = prev.copy()
            m = max(0, len(h) - n + 1)
            with np.errstate(over="ignore"):
                h[:m] = prev[:m] * _HASH_MUL + self.ids[n - 1 : n - 1 + m]
            self._hash[n] = h
        return self._hash[n]

    def valid(self, n: int) -> np.ndarray:
        """Positions where an n-gram fits inside its doc."""
        pos = np.arange(len(self.ids))
        return pos + n <= self.end[self.doc_of] if len(pos) else np.zeros(0, dtype=bool)

    def chars(self, n: int, pos: np.ndarray) -> np.ndarray:
        """Characters of the n-grams at ``pos``, words concatenated without separator."""
        return self.len_cum[pos + n] - self.len_cum[pos]

    def groups(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Distinct n-grams per doc: (doc, first position, count, sorted positions' group ids)."""
        pos = np.flatnonzero(self.valid(n))
        h = self.hashes(n)[pos]
        order = np.lexsort((pos, h, self.doc_of[pos]))
        pos_sorted = pos[order]
        key_doc = self.doc_of[pos_sorted]
        key_h = h[order]
        new = np.ones(len(pos_sorted), dtype=bool)
        new[1:] = (key_doc[1:] != key_doc[:-1]) | (key_h[1:] != key_h[:-1])
        first_idx = np.flatnonzero(new)
        counts = np.diff(np.append(first_idx, len(pos_sorted)))
        gid = np.cumsum(new) - 1
        return key_doc[first_idx], pos_sorted[first_idx], counts, np.stack([pos_sorted, gid])

    def top_ngram_chars(self, n: int) -> np.ndarray:
        """Per doc: characters of its most frequent n-gram (joined by spaces) times its count;
        ties go to the n-gram seen first, as ``Counter.most_common``."""
        out = np.zeros(len(self.end), dtype=np.int64)
        doc, first, count, _ = self.groups(n)
        if not len(doc):
            return out
        order = np.lexsort((first, -count, doc))
        doc_o = doc[order]
        lead = np.ones(len(doc_o), dtype=bool)
        lead[1:] = doc_o[1:] != doc_o[:-1]
        best = order[lead]
        out[doc[best]] = (self.chars(n, first[best]) + n - 1) * count[best]
        return out

    def dup_ngram_chars(self, n: int, docs: np.ndarray) -> np.ndarray:
        """Per doc in ``docs``: characters covered by repeated n-grams, scanning as datatrove's
        ``find_all_duplicate`` (after a repeat, skip ``n`` words). Docs with no repeated n-gram
        cost nothing; the others are scanned from their first repeat on."""
        out = np.zeros(len(docs), dtype=np.int64)
        if not len(docs):
            return out
        doc, _, count, pos_gid = self.groups(n)
        gid_at = np.empty(len(self.ids), dtype=np.int64)
        gid_at[pos_gid[0]] = pos_gid[1]
        repeated_docs = set(doc[count > 1].tolist())
        for k, d in enumerate(docs.tolist()):
            if d not in repeated_docs:
                continue
            s, e = int(self.start[d]), int(self.end[d]) - n + 1
            g = gid_at[s:e].tolist()
            seen: set[int] = set()
            total, i = 0, 0
            while i < len(g):
                if g[i] in seen:
                    total += int(self.len_cum[s + i + n] - self.len_cum[s + i])
                    i += n
                else:
                    seen.add(g[i])
                    i += 1
            out[k] = total
        return out


class GopherRepetitionFilter(Filter):
    """Gopher repetition rules: duplicate paragraphs and lines (count and character fractions),
    top 2-4-gram character fractions, duplicated 5-10-gram character fractions."""

    name: ClassVar[str] = "gopher_repetition"
    streams: ClassVar[tuple[str, ...]] = ("text", "interleaved")

    def __init__(self, cfg: GopherRepetitionConfig | None = None) -> None:
        self.cfg = cfg or GopherRepetitionConfig()

    def _line_rules(self, text: str) -> tuple[str, float] | None:
        c = self.cfg
        if not text:
            return "empty_text", 0.0
        paragraphs = _PARAGRAPH_SPLIT.split(text.strip())
        n, chars = _dup_elements(paragraphs)
        if c.max_dup_para_frac is not None and n / len(paragraphs) > c.max_dup_para_frac:
            return "dup_para_frac", n / len(paragraphs)
        if c.max_dup_para_char_frac is not None and chars / len(text) > c.max_dup_para_char_frac:
            return "dup_para_char_frac", chars / len(text)
        lines = _LINE_SPLIT.split(text)
        n, chars = _dup_elements(lines)
        if c.max_dup_line_frac is not None and n / len(lines) > c.max_dup_line_frac:
            return "dup_line_frac", n / len(lines)
        if c.max_dup_line_char_frac is not None and chars / len(text) > c.max_dup_line_char_frac:
            return "dup_line_char_frac", chars / len(text)
        return None

    def decide(self, live: pa.Table) -> Decision:
        """Apply the rules to every row's text, n-gram rules batched over the rows still kept."""
        texts = table_texts(live)
        verdicts: list[tuple[str, float] | None] = [self._line_rules(t) for t in texts]
        pending = np.array([v is None for v in verdicts], dtype=bool)
        if not pending.any():
            return _decide(len(texts), verdicts)
        rows = np.flatnonzero(pending)
        grams = BatchNgrams([split_words(texts[i]) for i in rows])
        text_len = np.array([len(texts[i]) for i in rows], dtype=np.float64)
        open_ = np.ones(len(rows), dtype=bool)
        for n, limit in enumerate(self.cfg.max_top_ngram_char_frac, start=2):
            frac = grams.top_ngram_chars(n) / text_len
            for k in np.flatnonzero(open_ & (frac > limit)):
                verdicts[rows[k]] = (f"top_{n}_gram_char_frac", float(frac[k]))
                open_[k] = False
        for n, limit in enumerate(self.cfg.max_dup_ngram_char_frac, start=5):
            todo = np.flatnonzero(open_)
            if not len(todo):
                break
            frac = grams.dup_ngram_chars(n, todo) / text_len[todo]
            for k, f in zip(todo[frac > limit], frac[frac > limit], strict=False):
                verdicts[rows[k]] = (f"dup_{n}_gram_char_frac", float(f))
                open_[k] = False
        return _decide(len(texts), verdicts)
