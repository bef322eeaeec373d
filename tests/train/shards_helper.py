"""Write a small ``mm1data/packed-v1`` dataset from real data, for the trainer's tests.

It follows the shard contract (the same one ``mm1data build`` writes) with a plain greedy packer:
real COCO images and captions, real Wikipedia summaries, the real GPT-2 tokenizer plus the added
special tokens. It exists so the trainer can be tested on its own; the end-to-end test trains on
``mm1data build`` output.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

SPECIALS = {"pad": "<pad>", "image": "<image>", "image_start": "<image_start>", "image_end": "<image_end>"}


def real_examples(shared: Path, n_captions: int, n_texts: int) -> tuple[list[tuple[Path, str]], list[str]]:
    """(image path, caption) pairs from COCO-mini and English Wikipedia summaries."""
    coco = json.loads((shared / "a-coco-mini/annotations/captions_val2017.json").read_text())
    files = {im["id"]: shared / "a-coco-mini/val2017" / im["file_name"] for im in coco["images"]}
    pairs, seen = [], set()
    for ann in coco["annotations"]:
        if ann["image_id"] not in seen and files[ann["image_id"]].exists():
            seen.add(ann["image_id"])
            pairs.append((files[ann["image_id"]], ann["caption"].strip()))
    with gzip.open(shared / "c-text/wiki-vital-summaries_en-us.json.gz", "rt") as f:
        wiki = json.load(f)
    texts = [v["extract"] for v in list(wiki.values())[:n_texts]]
    return pairs[:n_captions], texts


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _jpeg(path: Path, size: int) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        return buf.getvalue()


def write_packed_dataset(
    out: Path,
    shared: Path,
    *,
    seq_len: int = 128,
    image_size: int = 56,
    image_tokens: int = 4,
    max_images: int = 2,
    n_shards: int = 3,
    seqs_per_shard: int = 12,
) -> Path:
    """Pack real captions (with their images) and texts into ``n_shards`` tars plus manifest.json."""
    out.mkdir(parents=True, exist_ok=True)
    tok_path = shared / "e-tokenizers/gpt2-tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    tok.add_special_tokens(list(SPECIALS.values()))
    ids = {k: tok.token_to_id(v) for k, v in SPECIALS.items()} | {"eos": tok.token_to_id("<|endoftext|>")}
    pairs, texts = real_examples(shared, 60, 60)
    examples = []  # (stream, id, tokens, loss_mask, image path or None)
    for i in range(max(len(pairs), len(texts))):
        if i < len(pairs):
            path, caption = pairs[i]
            head = [ids["image_start"]] + [ids["image"]] * image_tokens + [ids["image_end"]]
            body = tok.encode(caption).ids[: seq_len - len(head) - 1] + [ids["eos"]]
            mask = [0] * len(head) + [1] * len(body)
            examples.append(("caption", f"coco-{path.stem}", head + body, mask, path))
        if i < len(texts):
            body = tok.encode(texts[i]).ids[: seq_len // 2 - 1] + [ids["eos"]]
            examples.append(("text", f"wiki-{i}", body, [0] + [1] * (len(body) - 1), None))
    total = n_shards * seqs_per_shard
    sequences, current = [], []
    k = 0
    while len(sequences) < total:
        ex = examples[k % len(examples)]
        k += 1
        used = sum(len(e[2]) for e in current)
        n_img = sum(e[4] is not None for e in current)
        if used + len(ex[2]) > seq_len or n_img + (ex[4] is not None) > max_images:
            sequences.append(current)
            current = []
        current.append(ex)
    shards_meta = []
    for s in range(n_shards):
        name = f"shard-{s:05d}.tar"
        tokens_per_stream: dict[str, int] = {}
        n_images = 0
        with tarfile.open(out / name, "w") as tar:
            for j, seq in enumerate(sequences[s * seqs_per_shard : (s + 1) * seqs_per_shard]):
                tokens = np.full(seq_len, ids["pad"], np.int32)
                seg, pos = np.zeros(seq_len, np.int32), np.zeros(seq_len, np.int32)
                mask = np.zeros(seq_len, np.uint8)
                meta: dict = {"examples": [], "images": []}
                members: dict[str, bytes] = {}
                at = 0
                for e, (stream, ex_id, toks, lmask, img) in enumerate(seq):
                    n = len(toks)
                    tokens[at : at + n], seg[at : at + n] = toks, e + 1
                    pos[at : at + n], mask[at : at + n] = np.arange(n), lmask
                    images = []
                    if img is not None:
                        images = [len(meta["images"])]
                        meta["images"].append({"slot_start": at + 1, "slot_len": image_tokens, "example": e})
                        members[f"img{images[0]:03d}.jpg"] = _jpeg(img, image_size)
                    meta["examples"].append(
                        {
                            "stream": stream,
                            "id": ex_id,
                            "lineage": {"source": "test"},
                            "span": [at, at + n],
                            "images": images,
                        }
                    )
                    tokens_per_stream[stream] = tokens_per_stream.get(stream, 0) + n
                    at += n
                n_images += len(meta["images"])
                members = {
                    "tokens.npy": _npy(tokens),
                    "segment_ids.npy": _npy(seg),
                    "positions.npy": _npy(pos),
                    "loss_mask.npy": _npy(mask),
                    "json": json.dumps(meta).encode(),
                } | members
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{s:05d}{j:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        blob = (out / name).read_bytes()
        shards_meta.append(
            {
                "path": name,
                "bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
                "sequences": seqs_per_shard,
                "images": n_images,
                "tokens": tokens_per_stream,
                "mix": {},
            }
        )
    manifest = {
        "format": "mm1data/packed-v1",
        "version": 1,
        "seq_len": seq_len,
        "image_tokens": image_tokens,
        "max_images": max_images,
        "image_size": image_size,
        "jpeg_quality": 90,
        "tokenizer": {
            "name": "gpt2",
            "sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest(),
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        },
        "special_tokens": ids,
        "mix": {"target": {"caption": 0.5, "text": 0.5}, "unit": "tokens"},
        "epochs": 1,
        "shards": shards_meta,
        "build": {"by": "tests/train/shards_helper.py"},
        "mm1data_version": "test",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def write_default_shaped(out: Path, shared: Path, *, n_shards: int = 2, seqs_per_shard: int = 32) -> Path:
    """:func:`write_packed_dataset` in the shapes of the default ``mm1data build`` (``BuildConfig``):
    4,096-token sequences, ≤ 16 images of 378² with 144 image tokens each."""
    from mm1data.config import BuildConfig

    build = BuildConfig()
    return write_packed_dataset(
        out,
        shared,
        seq_len=build.seq_len,
        image_size=build.image_size,
        image_tokens=build.image_tokens,
        max_images=build.max_images,
        n_shards=n_shards,
        seqs_per_shard=seqs_per_shard,
    )
