"""Read ``mm1data/packed-v1`` shards back: samples, the integrity check, summaries and rendering.

Member names, dtypes and the key rule come from :mod:`mm1data.shards.format`; tar member names
are sanitised before use (absolute paths, ``..`` parts and non-regular members are refused).
:func:`check_sample` is the one statement of the contract's per-sequence invariants;
``mm1data inspect`` and the tests both call it.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image

from mm1data.errors import UsageError
from mm1data.shards.format import (
    ARRAYS,
    META,
    BadShard,
    Manifest,
    image_member,
    load_array,
    read_manifest,
    read_members,
)

__all__ = ["BadShard", "Contract", "Sample", "check_sample", "read_shard_bytes", "shard_summary"]


@dataclass
class Sample:
    """One packed sequence as read from a shard."""

    key: str
    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    loss_mask: np.ndarray
    meta: dict
    jpegs: list[bytes]
    extra: list[str] = field(default_factory=list)  # members the contract does not name


def read_shard_bytes(data: bytes) -> list[Sample]:
    """Every sample of a shard's bytes (:class:`BadShard` when a member is missing or unreadable)."""
    samples = []
    for key, members in read_members(data):
        try:
            arrays = {m.removesuffix(".npy"): load_array(members[m], m) for m in ARRAYS}
            meta = json.loads(members[META])
        except KeyError as e:
            raise BadShard(f"{key}: missing member {e}") from e
        except (BadShard, ValueError) as e:
            raise BadShard(f"{key}: unreadable member: {e}") from e
        n_img = len(meta.get("images", []))
        jpegs = [members.get(image_member(i), b"") for i in range(n_img)]
        known = set(ARRAYS) | {META} | {image_member(i) for i in range(n_img)}
        samples.append(Sample(key=key, meta=meta, jpegs=jpegs, extra=sorted(set(members) - known), **arrays))
    return samples


def read_bytes(path: str) -> bytes:
    """Bytes of a local path or fsspec URL; :class:`UsageError` if it does not exist."""
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise UsageError(f"not found: {path}") from e


def manifest_beside(shard_path: str) -> Manifest | None:
    """The manifest of the dataset a shard sits in, or None when there is no valid one beside it."""
    try:
        return read_manifest(posixpath.dirname(shard_path) or ".")
    except UsageError:
        return None


@dataclass(frozen=True)
class Contract:
    """The parameters a sequence is checked against (from the manifest, or inferred from the shard)."""

    seq_len: int
    image_tokens: int
    max_images: int
    image_size: int | None
    pad: int
    image: int
    image_start: int | None = None
    image_end: int | None = None

    @classmethod
    def from_manifest(cls, m: Manifest) -> Contract:
        """The contract a manifest states."""
        sp = m.special_tokens
        return cls(
            seq_len=m.seq_len,
            image_tokens=m.image_tokens,
            max_images=m.max_images,
            image_size=m.image_size,
            pad=sp["pad"],
            image=sp["image"],
            image_start=sp.get("image_start"),
            image_end=sp.get("image_end"),
        )


def check_sample(s: Sample, c: Contract, decode_images: bool = True) -> list[str]:
    """Every way ``s`` breaks the packed-v1 contract (empty list: none)."""
    problems: list[str] = []
    L = c.seq_len
    for name in ("tokens", "segment_ids", "positions", "loss_mask"):
        if len(getattr(s, name)) != L:
            problems.append(f"{name} has length {len(getattr(s, name))}, expected {L}")
    if problems:
        return problems
    seg, pos, tok, mask = s.segment_ids, s.positions, s.tokens, s.loss_mask
    used = int(np.count_nonzero(seg))
    if np.any(seg[:used] == 0) or np.any(seg[used:] != 0):
        problems.append("segment id 0 outside the trailing padding")
    if used and (seg[0] != 1 or np.any(np.diff(seg[:used]) < 0) or np.any(np.diff(seg[:used]) > 1)):
        problems.append("segment ids do not run 1, 2, ... k without gaps")
    if np.any(tok[used:] != c.pad) or np.any(pos[used:] != 0) or np.any(mask[used:] != 0):
        problems.append("padding is not pad token, position 0, loss 0")
    starts = np.flatnonzero(np.diff(seg[:used], prepend=0) != 0)
    expected = np.arange(used) - np.repeat(starts, np.diff(np.append(starts, used)))
    if used and not np.array_equal(pos[:used], expected):
        problems.append("positions do not reset to 0 at each example start and count up by 1")
    examples, images = s.meta.get("examples", []), s.meta.get("images", [])
    if len(examples) != len(starts):
        problems.append(f"json lists {len(examples)} examples, segment ids show {len(starts)}")
    for k, ex in enumerate(examples):
        a, b = ex["span"]
        if k < len(starts) and (a != starts[k] or b != (starts[k + 1] if k + 1 < len(starts) else used)):
            problems.append(f"example {k} span {ex['span']} does not match its segment")
    if len(images) > c.max_images:
        problems.append(f"{len(images)} images > max_images {c.max_images}")
    is_slot = np.zeros(L, dtype=bool)
    for j, im in enumerate(images):
        a, n = im["slot_start"], im["slot_len"]
        if n != c.image_tokens or not np.all(tok[a : a + n] == c.image) or a + n > used:
            problems.append(f"image {j}: slot [{a}, {a + n}) is not {c.image_tokens} <image> tokens")
        is_slot[a : a + n] = True
        ex = examples[im["example"]] if im["example"] < len(examples) else None
        if ex is None or not ex["span"][0] <= a < a + n <= ex["span"][1] or j not in ex["images"]:
            problems.append(f"image {j}: slot is not inside its example")
    if int(np.count_nonzero(tok[:used] == c.image)) != c.image_tokens * len(images):
        problems.append("<image> tokens outside the listed slots")
    markers = np.isin(tok, [t for t in (c.image, c.image_start, c.image_end) if t is not None])
    if np.any(mask[markers | is_slot] != 0):
        problems.append("loss mask is 1 on an image slot or marker")
    for j, jpeg in enumerate(s.jpegs):
        if not jpeg:
            problems.append(f"{image_member(j)} missing")
        elif decode_images:
            try:
                with Image.open(io.BytesIO(jpeg)) as im:
                    im.load()
                    if c.image_size and im.size != (c.image_size, c.image_size):
                        size = f"{im.width}x{im.height}, expected {c.image_size}²"
                        problems.append(f"{image_member(j)} is {size}")
            except OSError as e:
                problems.append(f"{image_member(j)} does not decode: {e}")
    if s.extra:
        problems.append(f"unexpected members {s.extra}")
    return problems


def unpack(s: Sample) -> list[tuple[dict, np.ndarray]]:
    """(example metadata, its tokens) for each example of a sequence."""
    return [(ex, s.tokens[ex["span"][0] : ex["span"][1]]) for ex in s.meta["examples"]]


def infer_contract(samples: list[Sample], manifest: Manifest | None) -> Contract:
    """The manifest's contract, or one inferred from the shard itself when no manifest is beside it."""
    if manifest:
        return Contract.from_manifest(manifest)
    first = samples[0] if samples else None
    L = len(first.tokens) if first else 0
    slot = next((im for s in samples for im in s.meta["images"]), None)
    image = int(first.tokens[slot["slot_start"]]) if slot else -1
    pad = next((int(s.tokens[-1]) for s in samples if s.segment_ids[-1] == 0), -1)
    return Contract(L, slot["slot_len"] if slot else 0, 10**9, None, pad, image)


def shard_summary(path: str, decode_images: bool = True) -> dict:
    """Sequences, fill, images per sequence, tokens and examples per stream, and integrity problems."""
    data = read_bytes(path)
    manifest = manifest_beside(path)
    try:
        samples = read_shard_bytes(data)
    except BadShard as e:
        return {"path": path, "sequences": 0, "problems": [str(e)], "ok": False}
    c = infer_contract(samples, manifest)
    problems, tokens, examples = [], {}, {}
    n_images = [len(s.meta["images"]) for s in samples]
    used = 0
    for s in samples:
        problems += [f"{s.key}: {p}" for p in check_sample(s, c, decode_images)]
        used += int(np.count_nonzero(s.segment_ids))
        for ex in s.meta["examples"]:
            tokens[ex["stream"]] = tokens.get(ex["stream"], 0) + ex["span"][1] - ex["span"][0]
            examples[ex["stream"]] = examples.get(ex["stream"], 0) + 1
    if manifest:
        entry = next((e for e in manifest.shards if e.path == posixpath.basename(path)), None)
        if entry and entry.sha256 != hashlib.sha256(data).hexdigest():
            problems.append("sha256 does not match the manifest")
    return {
        "path": path,
        "bytes": len(data),
        "sequences": len(samples),
        "seq_len": c.seq_len,
        "fill": round(used / (len(samples) * c.seq_len), 6) if samples else 0.0,
        "images": sum(n_images),
        "images_per_sequence": {
            "min": min(n_images, default=0),
            "mean": round(float(np.mean(n_images)) if n_images else 0.0, 3),
            "max": max(n_images, default=0),
        },
        "tokens": dict(sorted(tokens.items())),
        "examples": dict(sorted(examples.items())),
        "problems": problems,
        "ok": not problems,
    }


def render_sample(
    s: Sample, decode, image_size: int | None, image_id: int, markers: tuple[int, ...] = ()
) -> str:
    """A sequence as text: ``‹image S×S›`` for each slot, a separator line between examples."""
    out = []
    size = f"{image_size}×{image_size}" if image_size else "?"
    for k, (ex, toks) in enumerate(unpack(s)):
        out.append(f"──── example {k + 1}: {ex['stream']} {ex['id']} span {ex['span']} ────")
        text, run = [], []
        i = 0
        toks = toks.tolist()
        while i < len(toks):
            t = toks[i]
            if t == image_id:
                j = i
                while j < len(toks) and toks[j] == image_id:
                    j += 1
                if run:
                    text.append(decode(run))
                    run = []
                text.append(f"‹image {size}›")
                i = j
                continue
            if t not in markers:
                run.append(t)
            i += 1
        if run:
            text.append(decode(run))
        out.append("".join(text))
    pad = int(np.count_nonzero(s.segment_ids == 0))
    if pad:
        out.append(f"──── padding: {pad} tokens ────")
    return "\n".join(out)


def export_images(s: Sample, folder: str | Path) -> list[Path]:
    """Write a sequence's JPEGs as ``<key>.imgNNN.jpg`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, jpeg in enumerate(s.jpegs):
        p = folder / f"{s.key.replace('/', '_')}.{image_member(i)}"
        p.write_bytes(jpeg)
        paths.append(p)
    return paths
