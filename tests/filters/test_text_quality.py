"""Gopher quality and repetition rules on real Dolma CC documents (picked by id)."""

from __future__ import annotations

import dataclasses

import pytest

from mm1data.config import GopherQualityConfig, GopherRepetitionConfig
from mm1data.filters.text_quality import GopherQualityFilter, GopherRepetitionFilter
from tests.filters.conftest import text_table

QUALITY_OFF = {
    f.name: None for f in dataclasses.fields(GopherQualityConfig) if f.name.startswith(("min_", "max_"))
}


def reason_of(flt, text: str) -> str | None:
    decision = flt.decide(text_table({"doc": text}))
    return decision.reason[0]


@pytest.mark.parametrize(
    ("doc_id", "reason"),
    [
        ("zof2fmrn6g2psv6dlllnp4ps6ilef4sv", "too_few_words"),  # empty page
        ("pzfabrqww6qbsp6pcpvogeoori3rogft", "short_mean_word_length"),
        ("ilsswvbmd3a6hrqsh4om2gvx7oawd3c3", "long_mean_word_length"),
        ("ledijphvhcpgthvlvf6kayipyyknq2rv", "too_many_ellipsis_lines"),
        ("4nb4dbwmy64y6dgtnyo7uufv6k7dkfzd", "too_few_alpha_words"),
        ("rtr5s2la4ysgu2rw33xcwyebasou7a7l", "too_few_stop_words"),
        ("dhpdbiqbt7epsjgtxb75pzakuoqdyy2m", None),
    ],
)
def test_gopher_quality_default_rules_on_real_docs(dolma_docs, doc_id, reason):
    assert reason_of(GopherQualityFilter(), dolma_docs[doc_id]) == reason


@pytest.mark.parametrize(
    ("doc_id", "rule", "reason"),
    [
        # No doc of the sample crosses these defaults; each is tripped by the sample's most extreme
        # real doc with that one rule on at a tighter threshold.
        ("gasyexmxtbsnxgb2nttzjr426k6sb3mo", {"max_doc_words": 20_000}, "too_many_words"),
        ("pza7ip54ksn22klvq2f2fsk4whso7tfo", {"max_symbol_word_ratio": 0.04}, "too_many_hashes"),
        ("yla5o277cxlkrkdepd2giqv3s73sposw", {"max_symbol_word_ratio": 0.1}, "too_many_ellipses"),
        ("qh7rmjpo7uov535t6u36aippr4plhs2l", {"max_bullet_lines_ratio": 0.9}, "too_many_bullet_lines"),
    ],
)
def test_gopher_quality_single_rule_on_most_extreme_real_doc(dolma_docs, doc_id, rule, reason):
    cfg = GopherQualityConfig(**{**QUALITY_OFF, **rule})
    assert reason_of(GopherQualityFilter(cfg), dolma_docs[doc_id]) == reason


@pytest.mark.parametrize(
    ("doc_id", "reason"),
    [
        ("zof2fmrn6g2psv6dlllnp4ps6ilef4sv", "empty_text"),
        ("d3dts4l6sqkzaewpwgb2naqw7txsgm4d", "dup_para_frac"),
        ("jkcmwkg63e7suh6gq4ihxcx55xinqbay", "dup_para_char_frac"),
        ("srnpc5ry2wjlx5nkkx5dwcep3bejtsmj", "dup_line_frac"),
        ("gj5z4ba7f2np3gs6uuhqsysjgmxf2ipk", "dup_line_char_frac"),
        ("qh7rmjpo7uov535t6u36aippr4plhs2l", "top_2_gram_char_frac"),
        ("tvkvymt4n4obhkpi3wjsv265hcozowz7", "top_3_gram_char_frac"),
        ("uwtlyc7lfzx6eqedt7znrltlkagxdc3e", "top_4_gram_char_frac"),
        ("4tjw5ogqvbhsjlr2pjoztd4rolgyuzhg", "dup_5_gram_char_frac"),
        ("stcdwwq5pnw2qgo3mbk4gxa42vbyyzds", "dup_6_gram_char_frac"),
        ("5vfthqpipzsjz57aunyw5mbj57a7fogu", "dup_8_gram_char_frac"),
        ("i7p3e5p32paptxbzbj2qq5dmd52tgqar", "dup_10_gram_char_frac"),
        ("dhpdbiqbt7epsjgtxb75pzakuoqdyy2m", None),
    ],
)
def test_gopher_repetition_rules_on_real_docs(dolma_docs, doc_id, reason):
    assert reason_of(GopherRepetitionFilter(), dolma_docs[doc_id]) == reason


def test_repetition_batch_equals_one_doc_at_a_time(dolma_docs):
    """Batched n-gram statistics give each doc the verdict it gets alone."""
    sample = dict(list(dolma_docs.items())[:120])
    flt = GopherRepetitionFilter(GopherRepetitionConfig())
    batch = flt.decide(text_table(sample)).reason
    assert batch == [reason_of(flt, t) for t in sample.values()]


def test_dropped_docs_get_reject_with_stage_reason_and_score(dolma_docs):
    table = text_table(
        {k: dolma_docs[k] for k in ("d3dts4l6sqkzaewpwgb2naqw7txsgm4d", "dhpdbiqbt7epsjgtxb75pzakuoqdyy2m")}
    )
    out = GopherRepetitionFilter()(table)
    rejects = out.column("reject").to_pylist()
    assert rejects[0]["stage"] == "gopher_repetition" and rejects[0]["reason"] == "dup_para_frac"
    assert rejects[0]["score"] > 0.3
    assert rejects[1] is None
