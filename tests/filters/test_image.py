"""Image checks on real COCO JPEGs and on small images made here for size/aspect cases."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest
from PIL import Image

from mm1data.config import ImageConfig, InterleavedConfig
from mm1data.filters.image import InterleavedDocFilter, InterleavedImageFilter, check_image
from mm1data.schemas import INTERLEAVED_DOC


def encode(w: int, h: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def coco(shared_data) -> bytes:
    return sorted((shared_data / "a-coco-mini" / "val2017").glob("*.jpg"))[0].read_bytes()


def test_real_coco_jpeg_passes(coco):
    assert check_image(coco, ImageConfig()) is None


def test_truncated_coco_jpeg_is_undecodable(coco):
    assert check_image(coco[: len(coco) // 3], ImageConfig())[0] == "undecodable_image"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode(149, 400), "image_too_small"),
        (encode(640, 200), "image_aspect_ratio_too_high"),
        (encode(200, 200, "GIF"), "image_format_not_allowed"),
        (b"", "missing_image"),
        (b"not an image at all", "undecodable_image"),
    ],
)
def test_bad_images_get_exact_reason(data, reason):
    assert check_image(data, ImageConfig())[0] == reason


def test_pixel_limit(coco):
    assert check_image(coco, ImageConfig(max_pixels=10_000))[0] == "image_too_many_pixels"


def doc(items: list[dict]) -> pa.Table:
    rows = [{"id": "d1", "items": items, "lineage": {"source": "t", "offset": 0}, "item_rejects": []}]
    return pa.Table.from_pylist(rows, schema=INTERLEAVED_DOC)


def test_bad_image_in_interleaved_doc_drops_the_item_not_the_doc(coco):
    text = "A real paragraph of text about the pictures in this document, long enough to keep."
    items = [
        {"kind": "text", "text": text, "position": 0},
        {"kind": "image", "image": coco, "url": "http://x/good.jpg", "position": 1},
        {"kind": "image", "image": encode(100, 100), "url": "http://x/tiny.png", "position": 2},
    ]
    out = InterleavedImageFilter(ImageConfig())(doc(items))
    assert out.column("reject")[0].as_py() is None
    kept = out.column("items")[0].as_py()
    assert [it["position"] for it in kept] == [0, 1]
    (rej,) = out.column("item_rejects")[0].as_py()
    assert rej["stage"] == "image" and rej["reason"] == "image_too_small" and "tiny.png" in rej["detail"]
    assert InterleavedDocFilter(InterleavedConfig())(out).column("reject")[0].as_py() is None


def test_doc_left_without_images_is_dropped():
    items = [
        {"kind": "text", "text": "word " * 50, "position": 0},
        {"kind": "image", "image": encode(100, 100), "url": "http://x/tiny.png", "position": 1},
    ]
    out = InterleavedDocFilter(InterleavedConfig())(InterleavedImageFilter(ImageConfig())(doc(items)))
    assert out.column("reject")[0].as_py()["reason"] == "too_few_images"
