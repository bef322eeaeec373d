"""Text filter throughput: mm1data vs datatrove on the same ~50,000-doc corpus, one process each.

Corpus: the 697 Dolma CC docs repeated (each copy gets a unique suffix line) to ``--docs`` docs.
mm1data: language ID + Gopher repetition + Gopher quality + C4, called directly on Arrow batches.
datatrove: LanguageFilter + GopherRepetitionFilter + GopherQualityFilter + C4QualityFilter in the
same order, one task, in this process. Both use the same lid.176.ftz (datatrove would download
lid.176.bin; offline we hand it the bundled model). Prints docs/s, docs/s per core, the ratio,
how many docs each kept and their agreement.

    python benchmarks/filters.py [--docs 50000]

Needs the ``bench`` extra (``pip install -e .[bench]``: datatrove, spaCy for its English words).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MM1DATA_SHARED_DATA", REPO.parent / "shared" / "data-candidates"))


def corpus(n_docs: int) -> list[tuple[str, str]]:
    """``n_docs`` (id, text) pairs: the Dolma CC sample repeated, each copy with a unique suffix."""
    path = next((DATA / "c-text").glob("dolma-CC-*.jsonl.gz"))
    with gzip.open(path, "rt") as f:
        base = [(d["id"], d["text"]) for d in map(json.loads, f)]
    out = []
    for i in range(n_docs):
        doc_id, text = base[i % len(base)]
        out.append((f"{doc_id}-{i}", f"{text}\nCopy number {i} of this page." if text else text))
    return out


def run_mm1data(docs: list[tuple[str, str]], batch: int = 512) -> tuple[float, set[str]]:
    from mm1data.config import FilterConfig
    from mm1data.filters import text_stages
    from mm1data.schemas import TEXT_DOC
    from mm1data.stages import live_mask

    stages = text_stages(FilterConfig())
    for s in stages:
        s.setup()
    kept: set[str] = set()
    t0 = time.perf_counter()
    for start in range(0, len(docs), batch):
        part = docs[start : start + batch]
        table = pa.table(
            {"id": [d[0] for d in part], "text": [d[1] for d in part]},
        )
        table = pa.Table.from_pydict(
            {
                name: table.column(name)
                if name in ("id", "text")
                else pa.nulls(len(part), TEXT_DOC.field(name).type)
                for name in TEXT_DOC.names
            },
            schema=TEXT_DOC,
        )
        for s in stages:
            table = s(table)
        ids = table.column("id").to_pylist()
        kept.update(ids[i] for i, alive in enumerate(live_mask(table)) if alive)
    return time.perf_counter() - t0, kept


def bundled_language_filter():
    """datatrove's LanguageFilter (English, 0.65) on the bundled lid.176 model, offline."""
    import fasttext
    from datatrove.pipeline.filters import LanguageFilter

    from mm1data.filters.language import lid_model_path

    class BundledLanguageFilter(LanguageFilter):
        """datatrove's LanguageFilter, unchanged, minus its check for the fasttext-numpy2-wheel
        distribution (which must not sit beside fasttext-predict); same predict code path."""

        def __new__(cls, *args, **kwargs):
            return object.__new__(cls)

    lid = BundledLanguageFilter(languages=["en"], language_threshold=0.65)
    model = fasttext.load_model(lid_model_path())  # offline: the bundled lid.176.ftz

    class NumpyScores:
        """fasttext-predict returns scores as floats; datatrove expects numpy scalars."""

        def predict(self, text: str, k: int = 1):
            labels, probs = model.predict(text, k=k)
            return labels, np.asarray(probs)

    lid.model._model = NumpyScores()
    return lid


def run_datatrove(docs: list[tuple[str, str]]) -> tuple[float, set[str]]:
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    lid = bundled_language_filter()
    steps = [lid, GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter()]
    # warm spaCy's tokenizer outside the timed run, as mm1data's model load is outside it
    list(steps[2].run(iter([Document(text="Warm up the tokenizer. " * 60, id="w")])))
    t0 = time.perf_counter()
    stream = (Document(text=t, id=i) for i, t in docs)
    for step in steps:
        stream = step.run(stream, rank=0, world_size=1)
    kept = {d.id for d in stream}
    return time.perf_counter() - t0, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=50_000)
    args = ap.parse_args()
    import logging

    from loguru import logger

    logger.remove()
    logging.disable(logging.WARNING)
    docs = corpus(args.docs)
    chars = sum(len(t) for _, t in docs)
    copies = len(docs) / 697
    corpus_size = f"{len(docs)} docs, {chars / 1e6:.1f} M chars (Dolma CC sample x{copies:.1f})"
    print(f"corpus: {corpus_size}, 1 process, 1 core")
    t_m, kept_m = run_mm1data(docs)
    t_d, kept_d = run_datatrove(docs)
    agree = sum((d[0] in kept_m) == (d[0] in kept_d) for d in docs) / len(docs)
    rate_m, rate_d = len(docs) / t_m, len(docs) / t_d
    name = "(LID + GopherRep + GopherQual + C4)"
    print(f"{'pipeline':<52} {'seconds':>8} {'docs/s':>9} {'docs/s/core':>12} {'kept':>7}")
    for tool, secs, rate, kept in (("datatrove", t_d, rate_d, kept_d), ("mm1data  ", t_m, rate_m, kept_m)):
        print(f"{tool + ' ' + name:<52} {secs:>8.1f} {rate:>9.0f} {rate:>12.0f} {len(kept):>7}")
    print(f"ratio mm1data / datatrove per core: {rate_m / rate_d:.1f}x; keep/drop agreement: {agree:.1%}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
