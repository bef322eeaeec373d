"""Write a small ``mm1data/packed-v1`` dataset from real data, for the trainer's and inspect's tests.

It writes through the contract's own writer (:mod:`mm1data.shards.writer`, the manifest and Energon
writers of :mod:`mm1data.shards.format` and :mod:`mm1data.shards.energon`) with a plain greedy
packer: real COCO images and captions, real Wikipedia summaries, the real GPT-2 tokenizer plus the
added special tokens. It exists so the trainer can be tested without a Ray build; the end-to-end
test trains on ``mm1data build`` output.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from mm1data.shards.format import Header, Mix, ShardEntry, sample_key, shard_name
from mm1data.shards.format import Tokenizer as TokenizerInfo
from mm1data.shards.writer import assemble, finish_dataset, put_shard, tar_bytes

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


def _jpeg(path: Path, size: int, quality: int = 90) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
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
    jpeg_quality: int = 90,
    first: int = 0,
    names: list[tuple[int, int]] | None = None,
) -> Path:
    """Pack real captions (with their images) and texts into ``n_shards`` shards (each with its
    ``.tar.idx``), the ``.nv-meta`` files, then ``manifest.json``. The shards are shards 0, 1, ...
    of plan partition 0, or the ``(partition, index)`` pairs in ``names``; ``first`` skips that
    many examples, for a second, different dataset."""
    names = names or [(0, s) for s in range(n_shards)]
    n_shards = len(names)
    out.mkdir(parents=True, exist_ok=True)
    tok_path = shared / "e-tokenizers/gpt2-tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    tok.add_special_tokens(list(SPECIALS.values()))
    ids = {k: tok.token_to_id(v) for k, v in SPECIALS.items()} | {"eos": tok.token_to_id("<|endoftext|>")}
    pairs, texts = real_examples(shared, 60, 60)
    examples = []  # rows of the EXAMPLE schema that the shard writer assembles
    for i in range(max(len(pairs), len(texts))):
        if i < len(pairs):
            path, caption = pairs[i]
            head = [ids["image_start"]] + [ids["image"]] * image_tokens + [ids["image_end"]]
            body = tok.encode(caption).ids[: seq_len - len(head) - 1] + [ids["eos"]]
            mask = [0] * len(head) + [1] * len(body)
            jpeg = _jpeg(path, image_size, jpeg_quality)
            examples.append(_example("caption", f"coco-{path.stem}", head + body, mask, [1], [jpeg]))
        if i < len(texts):
            body = tok.encode(texts[i]).ids[: seq_len // 2 - 1] + [ids["eos"]]
            examples.append(_example("text", f"wiki-{i}", body, [0] + [1] * (len(body) - 1), [], []))
    total = n_shards * seqs_per_shard
    sequences, current = [], []
    k = first
    while len(sequences) < total:
        ex = examples[k % len(examples)]
        k += 1
        used = sum(e["n_tokens"] for e in current)
        n_img = sum(e["n_images"] for e in current)
        if used + ex["n_tokens"] > seq_len or n_img + ex["n_images"] > max_images:
            sequences.append(current)
            current = []
        current.append(ex | {"slot_len": image_tokens})
    entries = []
    for s, (part, index) in enumerate(names):
        seqs = sequences[s * seqs_per_shard : (s + 1) * seqs_per_shard]
        samples = [(sample_key(part, index, j), assemble(q, seq_len, ids["pad"])) for j, q in enumerate(seqs)]
        tar, tar_index = tar_bytes(samples)
        put_shard(str(out), shard_name(part, index), tar, tar_index)
        tokens: dict[str, int] = {}
        n_ex: dict[str, int] = {}
        for e in (e for seq in seqs for e in seq):
            tokens[e["stream"]] = tokens.get(e["stream"], 0) + e["n_tokens"]
            n_ex[e["stream"]] = n_ex.get(e["stream"], 0) + 1
        entries.append(
            ShardEntry(
                path=shard_name(part, index),
                bytes=len(tar),
                sha256=hashlib.sha256(tar).hexdigest(),
                sequences=len(seqs),
                images=sum(e["n_images"] for seq in seqs for e in seq),
                tokens=tokens,
                examples=n_ex,
                mix={k: round(v / sum(tokens.values()), 6) for k, v in tokens.items()},
                full=s + 1 < n_shards and names[s + 1][0] == part,
            )
        )
    header = Header(
        seq_len=seq_len,
        image_tokens=image_tokens,
        max_images=max_images,
        image_size=image_size,
        jpeg_quality=jpeg_quality,
        tokenizer=TokenizerInfo(
            name="gpt2",
            sha256=hashlib.sha256(tok_path.read_bytes()).hexdigest(),
            vocab_size=tok.get_vocab_size(with_added_tokens=True),
        ),
        special_tokens=ids,
        mix=Mix(target={"caption": 0.5, "text": 0.5}, unit="tokens", realized={"caption": 0.5, "text": 0.5}),
        epochs={"caption": 1.0, "text": 1.0},
        build={"by": "tests/train/shards_helper.py"},
        mm1data_version="test",
    )
    finish_dataset(str(out), header, entries)
    return out


def _example(
    stream: str, ex_id: str, tokens: list[int], mask: list[int], starts: list[int], jpegs: list[bytes]
) -> dict:
    return {
        "stream": stream,
        "id": ex_id,
        "part": 0,
        "lineage": {"source": "tests/train/shards_helper.py", "offset": 0},
        "tokens": np.asarray(tokens, "<i4").tobytes(),
        "loss_mask": np.asarray(mask, "u1").tobytes(),
        "image_starts": starts,
        "images": jpegs,
        "n_tokens": len(tokens),
        "n_images": len(jpegs),
    }


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
