"""Render kept records as token examples with image slots (runs on Ray workers).

An example is what the packer places: ``tokens`` (int32), ``loss_mask`` (uint8), and for each of
its images the offset of its slot (first ``<image>`` token) and the image re-encoded once, as a
JPEG of ``image_size``² (the centered square of the shorter side, resized). An image slot is
``[<image_start>] <image> × image_tokens [<image_end>]``; ``loss_mask`` is 1 on text tokens that
are prediction targets: every text token but the first of an example (nothing precedes it),
never a slot, marker or padding.

- caption pair: slot, caption, end-of-text. One example per pair; which caption is used is a
  seeded hash of the pair id. A pair with synthetic captions uses one with probability
  ``synthetic_ratio`` (then its stream is ``synthetic_caption``), always when it has no other.
- interleaved doc: its items in order, each image a slot, consecutive text items joined by a
  blank line, end-of-text at the end. A doc over ``seq_len`` tokens or ``max_images`` images is
  split at item boundaries (a text item longer than an example is split between tokens, an image
  slot never).
- text doc: text, end-of-text, cut into ``seq_len``-token examples.

A record that cannot be rendered becomes one row with ``reason`` set (``image_undecodable``,
``no_caption``, ``empty_text``) and no tokens.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
from PIL import Image

from mm1data.config import BuildConfig
from mm1data.runners.ray_session import release_memory
from mm1data.runners.shuffle import hash64
from mm1data.schemas import LINEAGE, REJECT_INFO
from mm1data.tokens.tokenizer import TextTokenizer

EXAMPLE = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # unique per example: stream, lineage, id, part
        pa.field("key_hash", pa.int64(), nullable=False),  # hash64(key): partitions the plan and joins
        pa.field("stream", pa.string(), nullable=False),  # caption, synthetic_caption, interleaved, text
        pa.field("id", pa.string(), nullable=False),  # the record's id
        pa.field("part", pa.int32(), nullable=False),  # index of this piece of a split record
        pa.field("lineage", LINEAGE),
        pa.field("tokens", pa.binary()),  # int32 little-endian
        pa.field("loss_mask", pa.binary()),  # uint8
        pa.field("image_starts", pa.list_(pa.int32())),  # slot offsets (first <image>) in the example
        pa.field("images", pa.list_(pa.binary())),  # JPEG image_size², slot order
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("n_images", pa.int32(), nullable=False),
        pa.field("image_bytes", pa.int64(), nullable=False),  # JPEG bytes in all
        pa.field("reject", REJECT_INFO),  # set: the record could not be rendered (stage tokenize)
    ],
    metadata={"name": "Example", "version": "1"},
)

METADATA_COLUMNS = [
    "key",
    "key_hash",
    "stream",
    "id",
    "part",
    "n_tokens",
    "n_images",
    "image_bytes",
    "lineage",
]
"""What the plan reads of an example (no tokens, no images)."""


class ImageError(ValueError):
    """An image that Pillow cannot decode."""


def square_jpeg(data: bytes, size: int, quality: int) -> bytes:
    """``data`` as an RGB JPEG of ``size``²: the render of :func:`mm1data.ingest.base.square_jpeg_of`
    (EXIF-rotated, centered square of the shorter side, area or Lanczos resize)."""
    from mm1data.ingest.base import decode_at, square_jpeg_of

    try:
        with Image.open(io.BytesIO(data)) as im:
            return square_jpeg_of(im, decode_at(im, size), size, quality)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{type(e).__name__}: {str(e)[:120]}") from e


def unit_hash(seed: int, *parts: object) -> float:
    """A deterministic number in [0, 1) from ``seed`` and ``parts`` (the same on every worker)."""
    h = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


@lru_cache(maxsize=4)
def load_tokenizer(path: str | None) -> TextTokenizer:
    """One tokenizer per worker process and path."""
    return TextTokenizer(path)


@dataclass
class Piece:
    """A rendered piece of a record: text token ids, or one image (its JPEG)."""

    ids: list[int] | None = None
    jpeg: bytes | None = None


class Renderer:
    """Turns kept records of one stream into :data:`EXAMPLE` rows."""

    def __init__(self, cfg: BuildConfig, synthetic_ratio: float = 0.0) -> None:
        self.cfg = cfg
        self.synthetic_ratio = synthetic_ratio
        self.tok = load_tokenizer(cfg.tokenizer)
        ids = self.tok.ids
        marks = cfg.image_markers
        self.slot = ([ids["image_start"]] if marks else []) + [ids["image"]] * cfg.image_tokens
        self.slot += [ids["image_end"]] if marks else []
        self.slot_offset = 1 if marks else 0
        self.eos = ids["eos"]

    # ------------------------------------------------------------------ records to examples

    def __call__(self, table: pa.Table, stream: str) -> pa.Table:
        """Render every row of a kept-record batch of ``stream``."""
        rows = table.to_pylist()
        render = {"caption": self.captions, "interleaved": self.interleaved, "text": self.texts}[stream]
        out = render(rows)
        hashes = hash64([r["key"] for r in out])
        for r, h in zip(out, hashes.tolist(), strict=True):
            r["key_hash"] = h
        return pa.Table.from_pylist(out, schema=EXAMPLE)

    def _example(
        self, stream: str, row: dict, part: int, pieces: list[Piece], eos: bool, source_stream: str
    ) -> dict:
        tokens: list[int] = []
        mask: list[int] = []
        starts, images = [], []
        for p in pieces:
            if p.jpeg is not None:
                starts.append(len(tokens) + self.slot_offset)
                images.append(p.jpeg)
                tokens += self.slot
                mask += [0] * len(self.slot)
            else:
                tokens += p.ids
                mask += [1] * len(p.ids)
        if eos:
            tokens.append(self.eos)
            mask.append(1)
        if mask:
            mask[0] = 0  # the first token of an example is not predicted from anything in it
        lineage = row.get("lineage")
        where = f"{lineage['source']}:{lineage['offset']}" if lineage else ""
        return {
            "key": f"{source_stream}:{where}:{row['id']}#{part}",
            "stream": stream,
            "id": row["id"],
            "part": part,
            "lineage": lineage,
            "tokens": np.asarray(tokens, dtype="<i4").tobytes(),
            "loss_mask": np.asarray(mask, dtype=np.uint8).tobytes(),
            "image_starts": starts,
            "images": images,
            "n_tokens": len(tokens),
            "n_images": len(images),
            "image_bytes": sum(len(j) for j in images),
        }

    def _reject(self, row: dict, source_stream: str, reason: str, detail: str | None = None) -> dict:
        lineage = row.get("lineage")
        where = f"{lineage['source']}:{lineage['offset']}" if lineage else ""
        return {
            "key": f"{source_stream}:{where}:{row['id']}#reject",
            "stream": source_stream,
            "id": row["id"],
            "part": 0,
            "lineage": lineage,
            "n_tokens": 0,
            "n_images": 0,
            "image_bytes": 0,
            "reject": {"stage": "tokenize", "reason": reason, "detail": detail},
        }

    def _jpeg(self, data: bytes | None) -> bytes:
        if not data:
            raise ImageError("no image bytes")
        return square_jpeg(data, self.cfg.image_size, self.cfg.jpeg_quality)

    def choose_caption(self, row: dict) -> tuple[str, str] | None:
        """(stream, text) of the caption a pair uses, or None when it has none."""
        caps = [c for c in row.get("captions") or [] if c and (c.get("text") or "").strip()]
        synthetic = [c for c in caps if c["provenance"].startswith("synthetic")]
        plain = [c for c in caps if not c["provenance"].startswith("synthetic")]
        if not caps:
            return None
        seed = self.cfg.seed
        use_synthetic = bool(synthetic) and (
            not plain or unit_hash(seed, "synthetic", row["id"]) < self.synthetic_ratio
        )
        pool = synthetic if use_synthetic else plain
        pick = pool[int(unit_hash(seed, "caption", row["id"]) * len(pool))]
        return ("synthetic_caption" if use_synthetic else "caption"), pick["text"].strip()

    def captions(self, rows: list[dict]) -> list[dict]:
        """Caption pairs: image slot, caption, end-of-text."""
        chosen = [self.choose_caption(r) for r in rows]
        encoded = iter(self.tok.encode([c[1] for c in chosen if c]))
        room = self.cfg.seq_len - len(self.slot) - 1
        out = []
        for row, choice in zip(rows, chosen, strict=True):
            ids = next(encoded) if choice else None
            if choice is None:
                out.append(self._reject(row, "caption", "no_caption"))
                continue
            if not ids:
                out.append(self._reject(row, "caption", "empty_text"))
                continue
            try:
                jpeg = self._jpeg(row.get("image"))
            except ImageError as e:
                out.append(self._reject(row, "caption", "image_undecodable", str(e)))
                continue
            pieces = [Piece(jpeg=jpeg), Piece(ids=ids[:room])]
            out.append(self._example(choice[0], row, 0, pieces, True, "caption"))
        return out

    def interleaved(self, rows: list[dict]) -> list[dict]:
        """Interleaved docs: items in order, split at item boundaries to fit seq_len and max_images."""
        texts, where = [], []
        for r, row in enumerate(rows):
            prev_text = False
            for i, item in enumerate(row.get("items") or []):
                if item["kind"] == "text" and (item.get("text") or "").strip():
                    texts.append(("\n\n" if prev_text else "") + item["text"].strip())
                    where.append((r, i))
                    prev_text = True
                elif item["kind"] == "image":
                    prev_text = False
        encoded = dict(zip(where, self.tok.encode(texts), strict=True))
        out = []
        for r, row in enumerate(rows):
            pieces: list[Piece] = []
            try:
                for i, item in enumerate(row.get("items") or []):
                    if (r, i) in encoded and encoded[(r, i)]:
                        pieces.append(Piece(ids=encoded[(r, i)]))
                    elif item["kind"] == "image":
                        pieces.append(Piece(jpeg=self._jpeg(item.get("image"))))
            except ImageError as e:
                out.append(self._reject(row, "interleaved", "image_undecodable", str(e)))
                continue
            if not any(p.ids for p in pieces):
                out.append(self._reject(row, "interleaved", "empty_text"))
                continue
            parts = self.split(pieces)
            for k, part in enumerate(parts):
                out.append(self._example("interleaved", row, k, part, k == len(parts) - 1, "interleaved"))
        return out

    def split(self, pieces: list[Piece]) -> list[list[Piece]]:
        """Cut a doc's pieces into examples of at most ``seq_len - 1`` tokens (room for the final
        end-of-text) and ``max_images`` images, at piece boundaries; long text pieces are cut."""
        cap, slot, max_images = self.cfg.seq_len - 1, len(self.slot), self.cfg.max_images
        parts: list[list[Piece]] = [[]]
        used = images = 0

        def close() -> None:
            nonlocal used, images
            if parts[-1]:
                parts.append([])
            used = images = 0

        for p in pieces:
            if p.jpeg is not None:
                if used + slot > cap or images + 1 > max_images:
                    close()
                parts[-1].append(p)
                used, images = used + slot, images + 1
                continue
            ids = p.ids or []
            while ids:
                if used == cap:
                    close()
                take = ids[: cap - used]
                parts[-1].append(Piece(ids=take))
                used += len(take)
                ids = ids[len(take) :]
        return [p for p in parts if p]

    def texts(self, rows: list[dict]) -> list[dict]:
        """Text docs: text + end-of-text, cut into seq_len-token examples."""
        encoded = self.tok.encode([r.get("text") or "" for r in rows])
        n = self.cfg.seq_len
        out = []
        for row, ids in zip(rows, encoded, strict=True):
            if not ids:
                out.append(self._reject(row, "text", "empty_text"))
                continue
            full = ids + [self.eos]
            chunks = [full[i : i + n] for i in range(0, len(full), n)]
            for k, chunk in enumerate(chunks):
                out.append(self._example("text", row, k, [Piece(ids=chunk)], False, "text"))
        return out


def render_batch(table: pa.Table, stream: str, cfg: BuildConfig, synthetic_ratio: float) -> pa.Table:
    """Ray Data UDF: kept records of ``stream`` → :data:`EXAMPLE` rows (tokenizer cached per worker)."""
    out = _renderer(cfg, synthetic_ratio)(table, stream)
    release_memory()
    return out


@lru_cache(maxsize=4)
def _renderer(cfg: BuildConfig, synthetic_ratio: float) -> Renderer:
    return Renderer(cfg, synthetic_ratio)
