"""Language ID with the real lid.176 on real Wikipedia lead summaries."""

from __future__ import annotations

import gzip
import json

import pytest

from mm1data.config import LanguageConfig
from mm1data.filters.language import LanguageFilter
from tests.filters.conftest import text_table


@pytest.fixture(scope="module")
def lid() -> LanguageFilter:
    flt = LanguageFilter(LanguageConfig(languages=()))
    flt.setup()
    return flt


@pytest.mark.parametrize(("locale", "lang"), [("en-us", "en"), ("fr-fr", "fr"), ("es-es", "es")])
def test_lid_labels_1000_wikipedia_summaries_per_language(shared_data, lid, locale, lang):
    path = shared_data / "c-text" / f"wiki-vital-summaries_{locale}.json.gz"
    with gzip.open(path, "rt") as f:
        summaries = [v["extract"] for v in json.load(f).values() if v.get("extract")][:1000]
    assert len(summaries) == 1000
    langs, _ = lid.predict_all(summaries)
    accuracy = sum(x == lang for x in langs) / len(langs)
    assert accuracy >= 0.98, f"{locale}: {accuracy:.3f}"


def test_language_filter_annotates_kept_and_rejects_others(shared_data):
    with gzip.open(shared_data / "c-text" / "wiki-vital-summaries_fr-fr.json.gz", "rt") as f:
        fr = next(v["extract"] for v in json.load(f).values() if len(v.get("extract") or "") > 300)
    with gzip.open(shared_data / "c-text" / "wiki-vital-summaries_en-us.json.gz", "rt") as f:
        en = next(v["extract"] for v in json.load(f).values() if len(v.get("extract") or "") > 300)
    out = LanguageFilter(LanguageConfig(languages=("en",), min_score=0.65))(text_table({"en": en, "fr": fr}))
    assert out.column("language").to_pylist()[0] == "en"
    assert out.column("language_score").to_pylist()[0] > 0.65
    rejects = out.column("reject").to_pylist()
    assert rejects[0] is None
    assert rejects[1]["stage"] == "language" and rejects[1]["reason"] == "wrong_language"
    assert rejects[1]["detail"] == "predicted fr"
