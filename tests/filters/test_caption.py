"""Caption rules on real COCO captions and on alt-text boilerplate."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from mm1data.config import CaptionConfig
from mm1data.filters.caption import CaptionFilter, RepeatedCaptionFilter, normalize_caption
from mm1data.schemas import CAPTION_PAIR


@pytest.fixture(scope="module")
def coco_captions(shared_data) -> list[str]:
    ann = json.loads((shared_data / "a-coco-mini" / "annotations" / "captions_val2017.json").read_text())
    return [a["caption"] for a in ann["annotations"]]


@pytest.fixture(scope="module")
def flt() -> CaptionFilter:
    f = CaptionFilter(CaptionConfig())
    f.setup()
    return f


def test_real_coco_captions_pass(flt, coco_captions):
    reasons = [flt.check(c)[0] for c in coco_captions]
    assert sum(r is None for r in reasons) / len(reasons) >= 0.98


@pytest.mark.parametrize(
    ("caption", "reason"),
    [
        ("IMG_1234.jpg", "caption_file_name"),
        ("DSC01234", "caption_file_name"),
        ("photo", "caption_generic"),
        ("Image", "caption_generic"),
        ("see https://example.com/cat for more", "caption_url"),
        ("BUY NOW FREE SHIPPING TODAY", "caption_all_caps"),
        ("cat", "caption_too_short"),
        ("un chat noir dort sur le canapé du salon", "caption_wrong_language"),
    ],
)
def test_bad_captions_get_exact_reason(flt, caption, reason):
    assert flt.check(caption)[0] == reason


def pairs(captions: list[list[str]]) -> pa.Table:
    rows = [
        {
            "id": f"p{i}",
            "captions": [{"text": t, "provenance": "alt_text"} for t in caps],
            "lineage": {"source": "t", "offset": i},
        }
        for i, caps in enumerate(captions)
    ]
    return pa.Table.from_pylist(rows, schema=CAPTION_PAIR)


def test_bad_captions_removed_and_pair_dropped_only_when_none_left(flt, coco_captions):
    out = flt(pairs([[coco_captions[0], "IMG_1234.jpg"], ["IMG_9.jpg", "photo", "DSC_0001.JPG"]]))
    assert [c["text"] for c in out.column("captions")[0].as_py()] == [coco_captions[0]]
    assert out.column("reject")[0].as_py() is None
    assert out.column("language")[0].as_py() == "en"
    rej = out.column("reject")[1].as_py()
    assert rej["stage"] == "caption" and rej["reason"] == "caption_file_name"


def test_repeated_caption_removed(coco_captions):
    frequent = {normalize_caption("Click to enlarge"): 42}
    out = RepeatedCaptionFilter(frequent)(
        pairs([["Click to enlarge!"], ["click to enlarge", coco_captions[1]]])
    )
    assert out.column("reject")[0].as_py()["reason"] == "repeated_caption"
    assert out.column("reject")[1].as_py() is None
    assert len(out.column("captions")[1].as_py()) == 1
