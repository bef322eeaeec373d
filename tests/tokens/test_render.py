"""Tokenizer and example rendering on real data: the GPT-2 tokenizer.json and real COCO images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from mm1data.config import BuildConfig
from mm1data.tokens.render import EXAMPLE, ImageError, Renderer, square_jpeg
from mm1data.tokens.tokenizer import TextTokenizer

CFG = BuildConfig(seq_len=64, image_tokens=4, max_images=2, image_size=32, jpeg_quality=85)


@pytest.fixture(scope="module")
def coco_jpegs(shared_data: Path) -> list[bytes]:
    files = sorted((shared_data / "a-coco-mini/val2017").glob("*.jpg"))[:6]
    return [f.read_bytes() for f in files]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer()


def arr(blob: bytes, dtype) -> np.ndarray:
    return np.frombuffer(blob, dtype=dtype)


def test_special_tokens_are_added_past_the_vocabulary_and_never_come_from_text(tok: TextTokenizer) -> None:
    ids = tok.ids
    assert ids["eos"] == 50256  # GPT-2's own <|endoftext|>
    added = [ids[k] for k in ("pad", "image", "image_start", "image_end")]
    assert len(set(added)) == 4 and min(added) >= 50257 and tok.vocab_size == max(added) + 1
    literal = tok.encode(["a photo <image> of <|endoftext|> and <pad>"])[0]
    assert not set(literal) & {*added, ids["eos"]}
    assert tok.manifest()["name"] == "gpt2" and len(tok.manifest()["sha256"]) == 64


def test_a_missing_tokenizer_is_a_usage_error(tmp_path: Path) -> None:
    from mm1data.errors import UsageError

    with pytest.raises(UsageError, match="tokenizer not found"):
        TextTokenizer(tmp_path / "nope.json")


def test_images_are_resized_and_center_cropped_to_a_square_jpeg_deterministically(
    coco_jpegs: list[bytes],
) -> None:
    out = square_jpeg(coco_jpegs[0], 32, 85)
    assert out == square_jpeg(coco_jpegs[0], 32, 85)
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"
    with pytest.raises(ImageError):
        square_jpeg(b"not an image", 32, 85)


def caption_row(i: int, jpeg: bytes | None, captions: list[tuple[str, str]]) -> dict:
    return {
        "id": f"pair-{i}",
        "image": jpeg,
        "captions": [{"text": t, "provenance": p} for t, p in captions],
        "lineage": {"source": "coco.json", "offset": i},
    }


def test_a_caption_pair_is_slot_then_caption_then_eos_with_loss_on_the_caption_only(
    tok: TextTokenizer, coco_jpegs: list[bytes]
) -> None:
    r = Renderer(CFG)
    row = r.captions([caption_row(0, coco_jpegs[0], [("A cat on a mat.", "human")])])[0]
    tokens, mask = arr(row["tokens"], "<i4"), arr(row["loss_mask"], np.uint8)
    ids = tok.ids
    slot = [ids["image_start"], *[ids["image"]] * 4, ids["image_end"]]
    caption = tok.encode(["A cat on a mat."])[0]
    assert tokens.tolist() == slot + caption + [ids["eos"]]
    assert mask.tolist() == [0] * 6 + [1] * (len(caption) + 1)
    assert row["image_starts"] == [1] and row["n_images"] == 1 and row["stream"] == "caption"
    with Image.open(io.BytesIO(row["images"][0])) as im:
        assert im.size == (32, 32)


def test_synthetic_captions_are_used_at_the_configured_ratio_deterministically(
    coco_jpegs: list[bytes],
) -> None:
    rows = [
        caption_row(
            i, coco_jpegs[i % 6], [("alt text here", "alt_text"), ("a synthetic one", "synthetic:blip")]
        )
        for i in range(200)
    ]
    never = Renderer(CFG, synthetic_ratio=0.0).captions(rows[:20])
    always = Renderer(CFG, synthetic_ratio=1.0).captions(rows[:20])
    assert {x["stream"] for x in never} == {"caption"} and {x["stream"] for x in always} == {
        "synthetic_caption"
    }
    picks = [r.choose_caption(row)[0] for r in [Renderer(CFG, synthetic_ratio=0.3)] for row in rows]
    assert 0.2 < picks.count("synthetic_caption") / len(picks) < 0.4
    assert picks == [Renderer(CFG, synthetic_ratio=0.3).choose_caption(row)[0] for row in rows]


def test_unrenderable_pairs_become_rejects_with_specific_reasons(coco_jpegs: list[bytes]) -> None:
    out = Renderer(CFG).captions(
        [
            caption_row(0, b"\xff\xd8broken", [("fine caption", "human")]),
            caption_row(1, coco_jpegs[0], []),
            caption_row(2, coco_jpegs[0], [("   ", "human")]),
        ]
    )
    assert [x["reject"]["reason"] for x in out] == ["image_undecodable", "no_caption", "no_caption"]
    assert all(x["n_tokens"] == 0 for x in out)


def test_a_long_interleaved_doc_is_split_at_item_boundaries_within_both_budgets(
    tok: TextTokenizer, coco_jpegs: list[bytes]
) -> None:
    items = []
    for i in range(5):
        items.append({"kind": "text", "text": f"Paragraph {i}: " + "words " * 12})
        items.append({"kind": "image", "image": coco_jpegs[i]})
    doc = {"id": "doc-1", "items": items, "lineage": {"source": "mmc4.jsonl", "offset": 0}}
    parts = Renderer(CFG).interleaved([doc])
    assert len(parts) > 1 and [p["part"] for p in parts] == list(range(len(parts)))
    ids = tok.ids
    for p in parts:
        tokens = arr(p["tokens"], "<i4")
        assert len(tokens) <= CFG.seq_len and p["n_images"] <= CFG.max_images
        assert int(np.sum(tokens == ids["image"])) == 4 * p["n_images"]
        for s in p["image_starts"]:  # every slot whole inside its part
            assert tokens[s - 1] == ids["image_start"] and tokens[s + 4] == ids["image_end"]
            assert (tokens[s : s + 4] == ids["image"]).all()
    assert arr(parts[-1]["tokens"], "<i4")[-1] == ids["eos"]
    assert sum(p["n_images"] for p in parts) == 5


def test_a_long_text_is_cut_into_seq_len_examples_that_concatenate_back(tok: TextTokenizer) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 40
    parts = Renderer(CFG).texts([{"id": "t1", "text": text, "lineage": {"source": "c4", "offset": 3}}])
    full = tok.encode([text])[0] + [tok.ids["eos"]]
    assert all(p["n_tokens"] <= CFG.seq_len for p in parts) and parts[0]["n_tokens"] == CFG.seq_len
    assert np.concatenate([arr(p["tokens"], "<i4") for p in parts]).tolist() == full
    empty = Renderer(CFG).texts([{"id": "t2", "text": "", "lineage": None}])
    assert [x["reject"]["reason"] for x in empty] == ["empty_text"]


def test_a_rendered_batch_matches_the_example_schema(coco_jpegs: list[bytes]) -> None:
    table = pa.Table.from_pylist([caption_row(0, coco_jpegs[0], [("hello", "human")])])
    out = Renderer(CFG)(table, "caption")
    assert out.schema.equals(EXAMPLE) and out.num_rows == 1
