"""Real-data builders for the dedup tests: Dolma CC docs, COCO images, stream tables."""

from __future__ import annotations

import gzip
import io
import json
import random

import pyarrow as pa
import pytest
from PIL import Image

from mm1data.schemas import CAPTION_PAIR, INTERLEAVED_DOC, TEXT_DOC


@pytest.fixture(scope="session")
def dolma_docs(shared_data) -> list[tuple[str, str]]:
    """The 697 Dolma CC docs as (id, text)."""
    path = next((shared_data / "c-text").glob("dolma-CC-*.jsonl.gz"))
    with gzip.open(path, "rt") as f:
        return [(d["id"], d["text"]) for d in map(json.loads, f)]


@pytest.fixture(scope="session")
def coco_images(shared_data) -> list[tuple[str, bytes]]:
    """The 159 distinct COCO images as (file stem, JPEG bytes)."""
    files = sorted((shared_data / "a-coco-mini").glob("*2017/*.jpg"))
    return [(f.stem, f.read_bytes()) for f in files]


def change_words(text: str, frac: float, seed: int) -> str:
    """``text`` with ``frac`` of its words replaced by new random words."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(len(words) * frac))):
        words[i] = f"w{rng.randrange(10**9)}"
    return " ".join(words)


def degrade(data: bytes, quality: int = 40, scale: float = 0.8, crop: float = 0.02) -> bytes:
    """Resize to ``scale``, crop ``crop`` off each side, re-encode as JPEG at ``quality``."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize((round(img.width * scale), round(img.height * scale)))
    dx, dy = round(img.width * crop), round(img.height * crop)
    img = img.crop((dx, dy, img.width - dx, img.height - dy))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def text_table(docs: list[tuple[str, str]], quality: list[float | None] | None = None) -> pa.Table:
    """A TextDoc batch."""
    rows = [
        {
            "id": i,
            "text": t,
            "lineage": {"source": "dolma", "offset": k},
            "quality_score": quality[k] if quality else None,
        }
        for k, (i, t) in enumerate(docs)
    ]
    return pa.Table.from_pylist(rows, schema=TEXT_DOC)


def caption_table(images: list[tuple[str, bytes]]) -> pa.Table:
    """A CaptionPair batch (sha256 left null: dedup computes it)."""
    rows = [
        {
            "id": i,
            "image": b,
            "captions": [{"text": f"photo {i}", "provenance": "human"}],
            "lineage": {"source": "coco", "offset": k},
        }
        for k, (i, b) in enumerate(images)
    ]
    return pa.Table.from_pylist(rows, schema=CAPTION_PAIR)


def interleaved_table(docs: list[tuple[str, str, list[bytes]]]) -> pa.Table:
    """An InterleavedDoc batch: (id, text, images) → text item then image items."""
    rows = []
    for k, (i, text, images) in enumerate(docs):
        items = [{"kind": "text", "text": text, "position": 0}]
        items += [{"kind": "image", "image": b, "position": 1 + n} for n, b in enumerate(images)]
        rows.append({"id": i, "items": items, "lineage": {"source": "mmc4", "offset": k}, "item_rejects": []})
    return pa.Table.from_pylist(rows, schema=INTERLEAVED_DOC)
