"""Seeded generator of distinct records of every stream for ``benchmarks/growth.py``.

- **texts**: documents of 200–3,000 words made of real English sentences (the Dolma CC sample in
  ``../shared/data-candidates/c-text``, one sentence pool), drawn at random, so two documents
  share almost no 5-gram and pass the quality filters like real web text;
- **images**: procedural JPEGs (random ellipses and rectangles plus a texture), whose perceptual
  hashes are far apart;
- **caption pairs** (Parquet with image bytes), **interleaved docs** (OBELICS-style Parquet with
  3–6 images between paragraphs) and **text docs** (JSONL);
- **planted**: exact duplicates (3 % of records: same text or image bytes under another id),
  near-duplicates (5 %: texts with 2 % of words changed, images re-encoded at JPEG q40, resized
  to 90 % and cropped 2 % per side), one boilerplate text repeated 1,000 times (at the larger
  sizes), and 2 % records that must be rejected (truncated JPEGs, empty texts, non-JSON lines).

:func:`generate` writes the files and returns the ground truth: which ids are planted copies of
which, so the benchmark can measure recall.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data-candidates"


def sentence_pool(shared: Path = SHARED) -> list[str]:
    """Real English sentences (8–40 words, ending in terminal punctuation, no curly bracket,
    lid.176 says English with score >= 0.9) from the Dolma sample, which also holds other languages."""
    from mm1data.filters.language import LanguageIdentifier

    lid = LanguageIdentifier()
    path = next((shared / "c-text").glob("dolma-CC-*.jsonl.gz"))
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            for s in re.split(r"(?<=[.!?])\s+", json.loads(line)["text"]):
                words = s.split()
                if 8 <= len(words) <= 40 and s[-1] in ".!?" and s.isprintable() and "{" not in s:
                    lang, score = lid.predict(s)
                    if lang == "en" and score >= 0.9:
                        out.append(" ".join(words))
    return sorted(set(out))


def make_text(rng: random.Random, pool: list[str], words: int) -> str:
    """A document of about ``words`` words: paragraphs of 3–6 sentences from ``pool``."""
    paras, n = [], 0
    while n < words:
        para = [rng.choice(pool) for _ in range(rng.randint(3, 6))]
        n += sum(len(s.split()) for s in para)
        paras.append(" ".join(para))
    return "\n\n".join(paras)


def change_words(text: str, frac: float, rng: random.Random) -> str:
    """``text`` with ``frac`` of its words replaced by new ones (paragraphs kept)."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, round(len(words) * frac))):
        words[i] = f"w{rng.randrange(10**9)}"
    return " ".join(words)


def make_image(rng: np.random.Generator, px: int, quality: int = 85) -> bytes:
    """A procedural JPEG of ``px``²: eight random ellipses and rectangles over a random background,
    plus a texture. Edges make the perceptual hash as stable as a photo's under re-encoding,
    resizing and cropping (a smooth colour field is not: its DCT signs flip), and the hashes of
    two such images are far apart."""
    from PIL import ImageDraw

    img = Image.new("RGB", (px, px), tuple(int(x) for x in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = (int(v) for v in rng.integers(-px // 4, px, 2))
        w, h = (int(v) for v in rng.integers(px // 6, px * 2 // 3, 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x0 + w, y0 + h], fill=tuple(int(x) for x in rng.integers(0, 256, 3)))
    noise = rng.integers(-12, 13, (px, px, 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr, "RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def degrade(data: bytes) -> bytes:
    """A near-duplicate: resized to 90 %, cropped 2 % per side, re-encoded at JPEG q40."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize((round(img.width * 0.9), round(img.height * 0.9)))
    dx, dy = round(img.width * 0.02), round(img.height * 0.02)
    img = img.crop((dx, dy, img.width - dx, img.height - dy))
    if min(img.size) < 150:
        img = img.resize((150, 150))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=40)
    return out.getvalue()


@dataclass
class Truth:
    """What was planted: (copy id, original id) per kind, and the records that must be rejected."""

    exact_text: list[tuple[str, str]] = field(default_factory=list)
    near_text: list[tuple[str, str, float]] = field(default_factory=list)  # with true Jaccard
    exact_image: list[tuple[str, str]] = field(default_factory=list)
    near_image: list[tuple[str, str]] = field(default_factory=list)
    boilerplate: list[str] = field(default_factory=list)
    bad: dict[str, int] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)


def generate(root: Path, n: int, seed: int = 0, image_px: int = 160) -> Truth:
    """Write about ``n`` records (45 % caption pairs, 35 % interleaved docs, 20 % text docs) under
    ``root``; return the ground truth."""
    from mm1data.dedup.minhash import true_jaccard

    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    pool = sentence_pool()
    truth = Truth()
    root.mkdir(parents=True, exist_ok=True)
    n_cap, n_doc = int(n * 0.45), int(n * 0.35)
    n_text = n - n_cap - n_doc

    def kind(i: int) -> str:  # per record: distinct, exact copy, near copy or bad
        r = (i * 2654435761 % 1000) / 1000
        return "exact" if r < 0.03 else "near" if r < 0.08 else "bad" if r < 0.10 else "distinct"

    # caption pairs
    rows, originals = [], []
    for i in range(n_cap):
        k, rid = kind(i), f"cap{i:08d}"
        # halves of two sentences: millions of distinct captions (a whole sentence from a pool of
        # a few thousand would repeat and trip the repeated-caption rule at 100k pairs)
        caption = " ".join(rng.choice(pool).split()[:6] + rng.choice(pool).split()[-6:])
        if k == "exact" and originals:
            src = rng.choice(originals)
            data = src[1]
            truth.exact_image.append((rid, src[0]))
        elif k == "near" and originals:
            src = rng.choice(originals)
            data = degrade(src[1])
            truth.near_image.append((rid, src[0]))
        else:
            data = make_image(nrng, image_px)
            if k == "bad":
                data = data[: len(data) // 3]
                truth.bad["caption"] = truth.bad.get("caption", 0) + 1
            else:
                originals.append((rid, data))
        rows.append({"id": rid, "image": data, "caption": caption})
    _write_parquet(rows, root / "captions.parquet", 2000)
    truth.records["caption"] = n_cap

    # interleaved docs (OBELICS-style: parallel texts / images lists)
    rows, doc_texts = [], []
    for i in range(n_doc):
        k, rid = kind(i + 7), f"doc{i:08d}"
        if k == "exact" and doc_texts:
            src = rng.choice(doc_texts)
            texts, images = src[1], src[2]
            truth.exact_text.append((rid, src[0]))
        else:
            m = rng.randint(3, 6)
            paras = make_text(rng, pool, rng.randint(200, 1500)).split("\n\n")
            texts, images = [], []
            for j, p in enumerate(paras):
                texts.append(p)
                images.append(None)
                if j < m:
                    texts.append(None)
                    images.append(make_image(nrng, image_px))
            while sum(x is not None for x in images) < m:
                texts.append(None)
                images.append(make_image(nrng, image_px))
            if k == "near" and doc_texts:
                src = rng.choice(doc_texts)
                texts = [change_words(t, 0.02, rng) if t else t for t in src[1]]
                images = src[2]  # same picture bytes as well: exact image duplicates of the original's
                truth.near_text.append((rid, src[0], _doc_jaccard(src[1], texts, true_jaccard)))
            elif k == "bad":
                texts = [None] * len(texts)
                images = [b"not an image" if x is not None else None for x in images]
                truth.bad["interleaved"] = truth.bad.get("interleaved", 0) + 1
            else:
                doc_texts.append((rid, texts, images))
        rows.append({"id": rid, "texts": texts, "images": images, "url": f"https://example.org/{rid}"})
    _write_parquet(rows, root / "interleaved.parquet", 200)
    truth.records["interleaved"] = n_doc

    # text docs (JSONL), with the boilerplate text repeated up to 1,000 times
    boiler = make_text(rng, pool, 300)
    n_boiler = min(1000, n_text // 10)
    lines, text_docs = [], []
    for i in range(n_text):
        k, rid = kind(i + 13), f"txt{i:08d}"
        if i < n_boiler:
            text = boiler
            truth.boilerplate.append(rid)
        elif k == "exact" and text_docs:
            src = rng.choice(text_docs)
            text = src[1]
            truth.exact_text.append((rid, src[0]))
        elif k == "near" and text_docs:
            src = rng.choice(text_docs)
            text = change_words(src[1], 0.02, rng)
            truth.near_text.append((rid, src[0], true_jaccard(src[1], text)))
        elif k == "bad":
            lines.append("{not json " + rid)
            truth.bad["text"] = truth.bad.get("text", 0) + 1
            continue
        else:
            text = make_text(rng, pool, rng.randint(200, 3000))
            text_docs.append((rid, text))
        lines.append(json.dumps({"id": rid, "text": text}))
    with gzip.open(root / "text.jsonl.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    truth.records["text"] = n_text
    (root / "truth.json").write_text(json.dumps(truth.__dict__))
    return truth


def _doc_jaccard(a: list, b: list, true_jaccard) -> float:
    return true_jaccard("\n\n".join(t for t in a if t), "\n\n".join(t for t in b if t))


def _write_parquet(rows: list[dict], path: Path, row_group: int) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group)
