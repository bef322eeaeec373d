"""Perceptual hashes on real COCO images: degraded copies stay within the radius, distinct ones do not."""

from __future__ import annotations

import numpy as np
import pytest

from mm1data.config import DedupConfig
from mm1data.dedup import image_hash
from tests.dedup.conftest import degrade


@pytest.fixture(scope="module")
def hashes(coco_images):
    cfg = DedupConfig()
    base = np.array([image_hash.image_hash(b, cfg.image_hash_kind) for _, b in coco_images], np.uint64)
    return base


@pytest.mark.parametrize(
    "variant",
    [
        dict(quality=40, scale=1.0, crop=0.0),
        dict(quality=95, scale=0.8, crop=0.0),
        dict(quality=95, scale=1.0, crop=0.02),
        dict(quality=40, scale=0.8, crop=0.02),
    ],
    ids=["jpeg_q40", "resize_80", "crop_2pct", "all_three"],
)
def test_degraded_copies_are_within_the_radius(coco_images, hashes, variant):
    cfg = DedupConfig()
    copies = np.array(
        [image_hash.image_hash(degrade(b, **variant), cfg.image_hash_kind) for _, b in coco_images], np.uint64
    )
    d = image_hash.hamming(hashes, copies)
    recall = (d <= cfg.hamming_radius).mean()
    print(f"\n{variant}: recall {recall:.1%}, max distance {d.max()}")
    assert recall >= 0.95


def test_distinct_coco_images_are_never_within_the_radius(hashes):
    d = image_hash.hamming(hashes[:, None], hashes[None, :])
    np.fill_diagonal(d, 64)
    assert d.min() > DedupConfig().hamming_radius


def test_pigeonhole_bands_share_a_key_for_any_pair_within_the_radius():
    rng = np.random.default_rng(0)
    radius = 8
    a = rng.integers(0, 2**63, 500, dtype=np.uint64)
    flips = np.array([sum(1 << int(b) for b in rng.choice(64, radius, replace=False)) for _ in a], np.uint64)
    b = a ^ flips
    ka, kb = image_hash.band_keys(a, radius), image_hash.band_keys(b, radius)
    assert (ka == kb).any(axis=1).all()


def test_undecodable_bytes_have_no_hash():
    assert image_hash.image_hash(b"not an image") is None
