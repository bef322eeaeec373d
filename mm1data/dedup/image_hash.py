"""Near-duplicate images: a 64-bit perceptual hash (pHash or dHash) and a Hamming radius.

pHash (Zauner 2010, as the ``imagehash`` package): grayscale, resize to 32×32, 2-D DCT, keep the
8×8 lowest frequencies, one bit per coefficient above their median. dHash: grayscale 9×8, one
bit per horizontal gradient sign. Two images are near-duplicates when their hashes differ in at
most ``radius`` bits.

Bucketing (multi-index hashing): the 64 bits are split into ``radius + 1`` bands. Two hashes
within ``radius`` differ in at most ``radius`` bands, so by pigeonhole they agree exactly on at
least one band: grouping by (band index, band bits) finds every pair within the radius, and
only pairs inside a bucket are compared.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

HASH_BITS = 64


@lru_cache(maxsize=1)
def _dct_matrix(n: int = 32) -> np.ndarray:
    """Orthonormal DCT-II matrix of size ``n`` (rows: frequencies)."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def _bits_to_int(bits: np.ndarray) -> int:
    """64 booleans (row-major) to an unsigned 64-bit integer, first bit most significant."""
    return int.from_bytes(np.packbits(bits.astype(np.uint8)).tobytes(), "big")


GRAY_DRAFT = (64, 64)
"""JPEGs are decoded at the smallest DCT scale still at least this size (exact, and fast)."""


def _gray(img: Image.Image) -> Image.Image:
    """``img`` decoded in grayscale (JPEGs at a reduced DCT scale): the one pixel decode hashes need."""
    img.draft("L", GRAY_DRAFT)
    return img.convert("L")


def _phash(gray: Image.Image) -> int:
    pixels = np.asarray(gray.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    d = _dct_matrix(32)
    low = (d @ pixels @ d.T)[:8, :8]
    return _bits_to_int(low > np.median(low))


def _dhash(gray: Image.Image) -> int:
    pixels = np.asarray(gray.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.float64)
    return _bits_to_int(pixels[:, 1:] > pixels[:, :-1])


def hashes_of(img: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) of an opened image; decodes it once (the caller catches decode errors)."""
    return hashes_of_gray(_gray(img))


def hashes_of_gray(gray: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) of an image already decoded in grayscale ("L")."""
    return _phash(gray), _dhash(gray)


def phash(data: bytes) -> int:
    """64-bit DCT perceptual hash of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return _phash(_gray(img))


def dhash(data: bytes) -> int:
    """64-bit difference hash of encoded image bytes (sign of horizontal gradients on 9×8)."""
    with Image.open(io.BytesIO(data)) as img:
        return _dhash(_gray(img))


HASHERS = {"phash": phash, "dhash": dhash}


def image_hash(data: bytes, kind: str = "phash") -> int | None:
    """The ``kind`` hash of ``data``, or None when the bytes do not decode."""
    try:
        return HASHERS[kind](data)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes (broadcasting)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    return np.bitwise_count(x).astype(np.int64)


def band_spans(radius: int) -> list[tuple[int, int]]:
    """``radius + 1`` (shift, width) spans that cover the 64 bits as evenly as possible."""
    n = radius + 1
    widths = [HASH_BITS // n + (1 if i < HASH_BITS % n else 0) for i in range(n)]
    spans, shift = [], 0
    for w in widths:
        spans.append((shift, w))
        shift += w
    return spans


def band_keys(hashes: np.ndarray, radius: int) -> np.ndarray:
    """Bucket keys, shape (n, radius + 1): the band index in the top byte, the band bits below."""
    h = np.asarray(hashes, dtype=np.uint64)
    cols = []
    for i, (shift, width) in enumerate(band_spans(radius)):
        bits = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        cols.append(bits | np.uint64(i << 56))
    return np.stack(cols, axis=1) if cols else np.empty((len(h), 0), np.uint64)


def similarity(distance: np.ndarray | int) -> np.ndarray:
    """Similarity reported for a pair: 1 − Hamming distance / 64."""
    return 1.0 - np.asarray(distance, dtype=np.float64) / HASH_BITS
