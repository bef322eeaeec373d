"""C4 rules on real Dolma CC documents (picked by id)."""

from __future__ import annotations

import pytest

from mm1data.config import C4Config
from mm1data.filters.c4 import C4Filter
from tests.filters.conftest import text_table


@pytest.mark.parametrize(
    ("doc_id", "reason"),
    [
        ("ihozv7qx56plvzlp4s3l6jisj3htgjpi", "curly_bracket"),  # a "{" comes before its lorem ipsum
        ("xxhi5tgaf3kefeecjiy5ez6xu67cuare", "curly_bracket"),
        ("zof2fmrn6g2psv6dlllnp4ps6ilef4sv", "too_few_sentences"),
        ("5ihsi5a2uueyemjod2xhozkulbmwbug5", None),
    ],
)
def test_c4_doc_rules_on_real_docs(dolma_docs, doc_id, reason):
    assert C4Filter().decide(text_table({"d": dolma_docs[doc_id]})).reason[0] == reason


def test_c4_lorem_ipsum_on_real_doc(dolma_docs):
    flt = C4Filter(C4Config(curly_bracket=False))
    assert (
        flt.decide(text_table({"d": dolma_docs["ihozv7qx56plvzlp4s3l6jisj3htgjpi"]})).reason[0]
        == "lorem_ipsum"
    )


@pytest.mark.parametrize(
    ("doc_id", "line_rule", "terminal_punct"),
    [
        ("kfgd7qih7aeekf7zjwx4fqto54nnlkkm", "javascript", True),
        # the sample's policy lines ("Privacy Policy") all lack terminal punctuation, so that
        # rule sets them aside first; with it off, the policy rule does
        ("2snieawhsvpcaxah5kpygdmyglnuhrge", "policy", False),
        ("ilsswvbmd3a6hrqsh4om2gvx7oawd3c3", "too_long_word", True),
        ("5ihsi5a2uueyemjod2xhozkulbmwbug5", "no_terminal_punct", True),
    ],
)
def test_c4_line_rules_set_lines_aside_on_real_docs(dolma_docs, doc_id, line_rule, terminal_punct):
    """With a sentence floor no doc reaches, the detail shows which line rules fired."""
    flt = C4Filter(C4Config(min_sentences=10_000, terminal_punct=terminal_punct))
    decision = flt.decide(text_table({"d": dolma_docs[doc_id]}))
    assert decision.reason[0] == "too_few_sentences"
    assert f"{line_rule}=" in decision.detail[0]


def test_remove_lines_rewrites_kept_text(dolma_docs):
    doc = dolma_docs["kfgd7qih7aeekf7zjwx4fqto54nnlkkm"]
    out = C4Filter(C4Config(remove_lines=True))(text_table({"d": doc}))
    assert out.column("reject")[0].as_py() is None
    text = out.column("text")[0].as_py()
    assert "javascript" not in text.lower() and len(text) < len(doc)
