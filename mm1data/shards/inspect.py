"""Read ``mm1data/packed-v1`` shards back: samples, the integrity check, summaries and rendering.

Tar member names are sanitised before use: absolute paths, ``..`` parts and anything that is not
a regular file are refused. :func:`check_sample` is the one statement of the contract's
per-sequence invariants; ``mm1data inspect`` and the tests both call it.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import numpy as np
from PIL import Image

from mm1data.errors import UsageError
from mm1data.shards.writer import FORMAT

ARRAYS = {
    "tokens.npy": np.int32,
    "segment_ids.npy": np.int32,
    "positions.npy": np.int32,
    "loss_mask.npy": np.uint8,
}


class BadShard(ValueError):
    """A tar that is not a readable packed-v1 shard (bad member names, unreadable arrays...)."""


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


def safe_member_name(name: str) -> str:
    """``name`` if it is a plain relative path (no absolute path, no ``..``), else :class:`BadShard`."""
    norm = posixpath.normpath(name)
    if (
        name.startswith(("/", "\\"))
        or norm.startswith("..")
        or "/../" in f"/{name}/"
        or ":" in name.split("/")[0]
    ):
        raise BadShard(f"unsafe member name {name!r}")
    return norm


def read_members(data: bytes) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, in tar order (webdataset's rule: key = up to the first dot
    of the base name)."""
    out: list[tuple[str, dict[str, bytes]]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                name = safe_member_name(info.name)
                if not info.isfile():
                    raise BadShard(f"member {name!r} is not a regular file")
                folder, base = posixpath.split(name)
                if "." not in base:
                    raise BadShard(f"member {name!r} has no extension")
                key, ext = base.split(".", 1)
                key = posixpath.join(folder, key) if folder else key
                if not out or out[-1][0] != key:
                    out.append((key, {}))
                f = tar.extractfile(info)
                out[-1][1][ext] = f.read() if f else b""
    except tarfile.TarError as e:
        raise BadShard(f"not a readable tar: {e}") from e
    return out


def load_array(data: bytes, dtype: type) -> np.ndarray:
    """A 1-D ``.npy`` member (no pickles)."""
    a = np.load(io.BytesIO(data), allow_pickle=False)
    if a.ndim != 1 or a.dtype != np.dtype(dtype):
        raise BadShard(f"array {a.dtype}{list(a.shape)}, expected 1-D {np.dtype(dtype)}")
    return a


def read_shard_bytes(data: bytes) -> list[Sample]:
    """Every sample of a shard's bytes."""
    samples = []
    for key, members in read_members(data):
        try:
            arrays = {ext: load_array(members[ext], dt) for ext, dt in ARRAYS.items()}
            meta = json.loads(members["json"])
        except KeyError as e:
            raise BadShard(f"{key}: missing member {e}") from e
        except (ValueError, json.JSONDecodeError) as e:
            raise BadShard(f"{key}: unreadable member: {e}") from e
        n_img = len(meta.get("images", []))
        jpegs = [members.get(f"img{i:03d}.jpg", b"") for i in range(n_img)]
        known = set(ARRAYS) | {"json"} | {f"img{i:03d}.jpg" for i in range(n_img)}
        samples.append(
            Sample(
                key=key,
                tokens=arrays["tokens.npy"],
                segment_ids=arrays["segment_ids.npy"],
                positions=arrays["positions.npy"],
                loss_mask=arrays["loss_mask.npy"],
                meta=meta,
                jpegs=jpegs,
                extra=sorted(set(members) - known),
            )
        )
    return samples


def read_bytes(path: str) -> bytes:
    """Bytes of a local path or fsspec URL; :class:`UsageError` if it does not exist."""
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise UsageError(f"not found: {path}") from e


def read_manifest(root: str) -> dict:
    """``root/manifest.json`` of a finished dataset; :class:`UsageError` when absent or not packed-v1."""
    url = f"{root.rstrip('/')}/manifest.json"
    try:
        manifest = json.loads(read_bytes(url))
    except json.JSONDecodeError as e:
        raise UsageError(f"{url} is not valid JSON") from e
    if manifest.get("format") != FORMAT:
        raise UsageError(f"{url}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


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
    def from_manifest(cls, m: dict) -> Contract:
        """The contract a manifest states."""
        sp = m["special_tokens"]
        return cls(
            seq_len=int(m["seq_len"]),
            image_tokens=int(m["image_tokens"]),
            max_images=int(m["max_images"]),
            image_size=int(m["image_size"]),
            pad=int(sp["pad"]),
            image=int(sp["image"]),
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
            problems.append(f"img{j:03d}.jpg missing")
        elif decode_images:
            try:
                with Image.open(io.BytesIO(jpeg)) as im:
                    im.load()
                    if c.image_size and im.size != (c.image_size, c.image_size):
                        problems.append(f"img{j:03d}.jpg is {im.width}x{im.height}, expected {c.image_size}²")
            except OSError as e:
                problems.append(f"img{j:03d}.jpg does not decode: {e}")
    if s.extra:
        problems.append(f"unexpected members {s.extra}")
    return problems


def unpack(s: Sample) -> list[tuple[dict, np.ndarray]]:
    """(example metadata, its tokens) for each example of a sequence."""
    return [(ex, s.tokens[ex["span"][0] : ex["span"][1]]) for ex in s.meta["examples"]]


def infer_contract(samples: list[Sample], manifest: dict | None) -> Contract:
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
    manifest = None
    try:
        manifest = read_manifest(posixpath.dirname(path) or ".")
    except UsageError:
        manifest = None
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
        entry = next((e for e in manifest["shards"] if e["path"] == posixpath.basename(path)), None)
        if entry and entry.get("sha256") != hashlib.sha256(data).hexdigest():
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
        p = folder / f"{s.key.replace('/', '_')}.img{i:03d}.jpg"
        p.write_bytes(jpeg)
        paths.append(p)
    return paths


def verify_dataset(root: str, manifest: dict) -> list[dict]:
    """Re-hash every shard: (path, ok, problem) per shard of the manifest."""
    out = []
    for entry in manifest["shards"]:
        url = entry["path"] if "://" in entry["path"] else f"{root.rstrip('/')}/{entry['path']}"
        try:
            data = read_bytes(url)
        except UsageError as e:
            out.append({"path": entry["path"], "ok": False, "problem": str(e)})
            continue
        digest = hashlib.sha256(data).hexdigest()
        problem = None
        if digest != entry["sha256"]:
            problem = "sha256 mismatch"
        elif len(data) != entry["bytes"]:
            problem = "size mismatch"
        out.append({"path": entry["path"], "ok": problem is None, "problem": problem})
    return out
