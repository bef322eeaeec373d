"""Decontamination: drop training records that contain eval material (reason ``decontaminated``).

Text: a text or interleaved doc is dropped when it contains at least ``threshold`` of the word
``ngram`` shingles of some eval text (containment, not Jaccard: an eval question quoted inside a
long web page still counts). Images: a caption pair, or an image item of an interleaved doc, is
dropped when its perceptual hash is within the Hamming radius of an eval image.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from mm1data.config import DedupConfig
from mm1data.dedup import image_hash, minhash
from mm1data.dedup.exact import live_images, live_texts
from mm1data.errors import UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass
class EvalIndex:
    """Eval shingles (sorted, with the eval text each came from) and eval image hashes."""

    shingles: np.ndarray  # uint64, sorted
    owners: np.ndarray  # int64, eval text index of each shingle
    sizes: np.ndarray  # int64, distinct shingles per eval text
    names: list[str]  # "file#line" per eval text
    image_hashes: np.ndarray  # uint64
    image_names: list[str]

    def is_empty(self) -> bool:
        """True when there is nothing to decontaminate against."""
        return not self.names and not self.image_names


def _read_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise UsageError(f"decontamination text file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if ".jsonl" in path.suffixes:
            return [json.loads(line).get("text") or "" for line in f if line.strip()]
        return [line.strip() for line in f if line.strip()]


def _image_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.is_file():
        return [path]
    raise UsageError(f"decontamination image path not found: {path}")


def build_index(
    cfg: DedupConfig, texts: list[str] | None = None, images: list[bytes] | None = None
) -> EvalIndex:
    """The eval index from ``cfg``'s paths, plus any ``texts``/``images`` given directly."""
    names, all_texts = [], []
    for p in cfg.decontaminate_texts:
        for i, t in enumerate(_read_texts(Path(p))):
            names.append(f"{p}#{i}")
            all_texts.append(t)
    for i, t in enumerate(texts or []):
        names.append(f"eval-text#{i}")
        all_texts.append(t)
    hashes, starts = minhash.shingles(minhash.split_normalized(all_texts), cfg.ngram)
    sh, own, sizes = [], [], []
    for k in range(len(all_texts)):
        uniq = np.unique(hashes[starts[k] : starts[k + 1]])
        sh.append(uniq)
        own.append(np.full(len(uniq), k, np.int64))
        sizes.append(len(uniq))
    flat = np.concatenate(sh) if sh else np.empty(0, np.uint64)
    owners = np.concatenate(own) if own else np.empty(0, np.int64)
    order = np.argsort(flat, kind="stable")
    image_names, image_hashes = [], []
    blobs = [(str(f), f.read_bytes()) for p in cfg.decontaminate_images for f in _image_files(Path(p))]
    blobs += [(f"eval-image#{i}", b) for i, b in enumerate(images or [])]
    for name, data in blobs:
        h = image_hash.image_hash(data, cfg.image_hash_kind)
        if h is not None:
            image_names.append(name)
            image_hashes.append(h)
    return EvalIndex(
        flat[order],
        owners[order],
        np.array(sizes, np.int64),
        names,
        np.array(image_hashes, np.uint64),
        image_names,
    )


def text_contamination(texts: list[str], index: EvalIndex, ngram: int) -> list[tuple[float, str] | None]:
    """Per text: (containment, eval name) of the eval text it contains most, or None below any match."""
    out: list[tuple[float, str] | None] = [None] * len(texts)
    if not len(index.shingles) or not texts:
        return out
    hashes, starts = minhash.shingles(minhash.split_normalized(texts), ngram)
    for d in range(len(texts)):
        doc = np.unique(hashes[starts[d] : starts[d + 1]])
        lo = np.searchsorted(index.shingles, doc, side="left")
        hi = np.searchsorted(index.shingles, doc, side="right")
        hit = hi > lo
        if not hit.any():
            continue
        owners = np.concatenate([index.owners[a:b] for a, b in zip(lo[hit], hi[hit], strict=True)])
        counts = np.bincount(owners, minlength=len(index.sizes))
        frac = counts / np.maximum(index.sizes, 1)
        k = int(np.argmax(frac))
        out[d] = (float(frac[k]), index.names[k])
    return out


CHECKED = pa.schema([("member", pa.string()), ("eval", pa.string()), ("score", pa.float64())])
"""One row per member checked: the eval item it matches (null when clean) and the score."""


def check_batch(table: pa.Table, stream: str, index: EvalIndex, cfg: DedupConfig) -> pa.Table:
    """:data:`CHECKED` rows for every live text and image of a batch."""
    rows: list[tuple[str, str | None, float | None]] = []
    if stream in ("text", "interleaved") and index.names:
        members, texts, _ = live_texts(table, stream)
        for m, hit in zip(members, text_contamination(texts, index, cfg.ngram), strict=True):
            bad = hit is not None and hit[0] >= cfg.decontaminate_threshold
            rows.append((m, hit[1] if bad else None, hit[0] if bad else None))
    if stream in ("caption", "interleaved") and len(index.image_hashes):
        for m, _, image, meta in live_images(table, stream):
            h = meta.get(cfg.image_hash_kind)
            h = image_hash.image_hash(image.as_py(), cfg.image_hash_kind) if h is None else h
            if h is None:
                continue
            d = image_hash.hamming(h, index.image_hashes)
            k = int(np.argmin(d))
            bad = bool(d[k] <= cfg.hamming_radius)
            rows.append(
                (
                    m,
                    index.image_names[k] if bad else None,
                    float(image_hash.similarity(d[k])) if bad else None,
                )
            )
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[], [], []]
    return pa.table(cols, schema=CHECKED)
