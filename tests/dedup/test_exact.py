"""Exact-duplicate keys: normalized-text hashes and image sha256, over one index for both streams."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from mm1data.dedup.exact import image_entries, live_images, normalize_text, text_entries, text_key
from mm1data.stages import reject_rows
from tests.dedup.conftest import caption_table, interleaved_table, text_table


def test_text_key_ignores_case_and_layout_but_not_words(dolma_docs):
    text = dolma_docs[0][1]
    relaid = "\n\n  ".join(text.upper().split(" "))
    assert normalize_text(relaid) == normalize_text(text)
    assert text_key(relaid) == text_key(text)
    assert text_key(text + " more") != text_key(text)


def test_text_doc_and_interleaved_doc_with_the_same_text_share_a_key(dolma_docs):
    (i, text) = dolma_docs[3]
    a = text_entries(text_table([(i, text)]), "text").to_pylist()
    b = text_entries(interleaved_table([("doc", "  " + text.lower(), [])]), "interleaved").to_pylist()
    assert a[0]["key"] == b[0]["key"]
    assert (a[0]["member"], b[0]["member"]) == (f"text:{i}", "interleaved:doc")


def test_caption_images_and_interleaved_images_are_keyed_by_sha256(coco_images):
    (name, data), (_, other) = coco_images[0], coco_images[1]
    caps = image_entries(caption_table([(name, data)]), "caption").to_pylist()
    items = image_entries(interleaved_table([("doc", "some text", [other, data])]), "interleaved").to_pylist()
    sha = hashlib.sha256(data).hexdigest()
    assert caps == [{"key": sha, "member": f"caption:{name}", "quality": caps[0]["quality"]}]
    # each image item is its own member, named by its position in the doc
    assert [(r["key"], r["member"]) for r in items] == [
        (hashlib.sha256(other).hexdigest(), "interleaved:doc#1"),
        (sha, "interleaved:doc#2"),
    ]


def test_rejected_and_empty_records_are_not_indexed(dolma_docs):
    table = text_table([dolma_docs[0], dolma_docs[1], ("blank", "  \n ")])
    table = reject_rows(table, np.array([True, False, False]), "filter", "too_short")
    assert [r["member"] for r in text_entries(table, "text").to_pylist()] == [f"text:{dolma_docs[1][0]}"]


def test_interleaved_images_are_found_in_sliced_and_chunked_batches(coco_images):
    """Batches are slices of blocks, often of several chunks: every live image item is found,
    under its own doc, whatever the offsets (a doc with no items in between)."""
    imgs = [data for _, data in coco_images[:5]]
    docs = [("a", "x", imgs[:2]), ("b", "y", []), ("c", "z", imgs[2:5]), ("d", "w", imgs[:1])]
    whole = interleaved_table(docs)
    batch = pa.concat_tables([whole.slice(1, 2), whole.slice(3, 1)])  # docs b, c | d
    assert batch.column("items").num_chunks == 2
    got = [(m, img.as_py()) for m, _, img, _ in live_images(batch, "interleaved")]
    want = [(f"interleaved:c#{k + 1}", b) for k, b in enumerate(imgs[2:5])] + [("interleaved:d#1", imgs[0])]
    assert got == want
