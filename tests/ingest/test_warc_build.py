"""`mm1data build --mix 45:45:10` with a WARC as the interleaved source: valid packed-v1 shards
whose interleaved example is the page's text and images in reading order.

The pywb crawl's only content image is an SVG (its PNG is referenced from CSS, not an ``<img>``),
and the dolma sample WARCs hold no image records, so the build reads a WARC made of a real page
(https://creativecommons.org/mission/ from the dolma sample) with real COCO JPEGs stored under
its three image URLs: as a response, as a revisit of that response, and behind a 302."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mm1data.cli import main
from mm1data.config import REPO_ROOT
from mm1data.shards import inspect as ins
from mm1data.shards.format import Manifest, verify
from mm1data.tokens.tokenizer import TextTokenizer
from tests.ingest.conftest import mission_warc


def test_build_from_a_warc_puts_the_pages_text_and_images_in_order(ray_local, shared_data, tmp_path):
    warc = mission_warc(shared_data, tmp_path / "crawl.warc.gz")
    out = tmp_path / "out"
    sample = REPO_ROOT / "sample"
    recipe = tmp_path / "small.yaml"  # small sequences and images keep the test short
    recipe.write_text("build: {seq_len: 1024, image_tokens: 16, max_images: 8, image_size: 64}\n")
    args = ["build", "--quiet", "--config", str(recipe), "--mix", "45:45:10", "--output", str(out),
            "--shard-size", "2",
            "--interleaved", str(warc),
            "--captions", f"coco:{sample}/captions/captions.json@{sample}/captions/images",
            "--text", str(sample / "text" / "c4_sample.jsonl.gz")]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "stats.json").read_text())
    inter = stats["streams"]["interleaved"]
    assert (inter["read"], inter["kept"], inter["rejected"]) == (5, 1, 4)  # one page; 4 image records
    assert inter["rejected_by_reason"] == {"ingest/not_html": 4}

    manifest = json.loads((out / "manifest.json").read_text())
    assert verify(str(out)) == []  # sizes, sha256, .tar.idx and .nv-meta all match
    contract = ins.Contract.from_manifest(Manifest.from_json(manifest))
    samples = [s for e in manifest["shards"] for s in ins.read_shard_bytes((out / e["path"]).read_bytes())]
    assert all(ins.check_sample(s, contract) == [] for s in samples)
    tok = TextTokenizer()
    markers = tuple(m for m in (contract.image_start, contract.image_end) if m is not None)
    pages = [
        ins.render_sample(s, tok.decode, contract.image_size, contract.image, markers)
        for s in samples
        if any(ex["stream"] == "interleaved" for ex in s.meta["examples"])
    ]
    assert pages, "the page is in the shards"
    text = "\n".join(pages)
    page = text[text.index("interleaved crawl:0") :].split("\n──── ")[0]  # the example, to the next one
    slot = f"‹image {contract.image_size}×{contract.image_size}›"
    # reading order: the CC logo, the mission statement, the "Wispies" credit, the values chart,
    # its text. The "Wispies" image is the revisit of the logo's bytes, so exact-image dedup takes
    # it out of the doc; "Skip to content", 2-word headings and the chart's credit line (digits and
    # quotes: special characters) are OBELICS paragraph rejects.
    first = page.index(slot)
    marks = [
        page.index("Creative Commons (CC) is an international nonprofit"),
        page.index("“ Wispies” by FictarGraphics is licensed via CC BY 3.0."),
    ]
    second = page.index(slot, marks[-1])
    after = page.index("We know that the world is constantly evolving", second)
    assert first < marks[0] < marks[1] < second < after
    assert page.count(slot) == 2
    assert "Skip to content" not in page
    assert inter["item_rejects_by_reason"] == {
        "dedup/exact_duplicate": 1,
        "paragraph/paragraph_special_characters": 2,
        "paragraph/paragraph_too_few_words": 4,
    }
