"""Assemble packed sequences and write them as deterministic WebDataset tars (``mm1data/packed-v1``).

One sample per sequence, key ``<shard:05d>-<seq:06d>``; members ``tokens.npy``,
``segment_ids.npy``, ``positions.npy``, ``loss_mask.npy``, ``json`` and ``img000.jpg``... The tar
is built in memory with fixed mtime, uid, gid, mode and owner names, members sorted per sample, so
the same plan gives the same bytes on any worker.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa

FORMAT = "mm1data/packed-v1"
VERSION = 1
MTIME = 0  # every tar member: 1970-01-01, uid/gid 0, mode 0644, no owner names


def shard_name(part: int, index: int) -> str:
    """File name of shard ``index`` of plan partition ``part`` inside the dataset folder."""
    return f"shard-{part:05d}-{index:05d}.tar"


def sample_key(part: int, index: int, seq: int) -> str:
    """WebDataset key of sequence ``seq`` of shard ``index`` of plan partition ``part`` (no dots)."""
    return f"{part:05d}-{index:05d}-{seq:06d}"


def npy_bytes(a: np.ndarray) -> bytes:
    """``a`` as ``.npy`` bytes (loadable with ``allow_pickle=False``)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def assemble(examples: list[dict], seq_len: int, pad_id: int) -> dict[str, bytes]:
    """The members of one sequence from its examples in order (rows of the EXAMPLE schema)."""
    tokens = np.full(seq_len, pad_id, dtype=np.int32)
    segment_ids = np.zeros(seq_len, dtype=np.int32)
    positions = np.zeros(seq_len, dtype=np.int32)
    loss_mask = np.zeros(seq_len, dtype=np.uint8)
    meta: dict = {"examples": [], "images": []}
    jpegs: list[bytes] = []
    at = 0
    for k, ex in enumerate(examples):
        toks = np.frombuffer(ex["tokens"], dtype="<i4")
        n = len(toks)
        if at + n > seq_len:
            raise ValueError(f"sequence overflow: {at} + {n} > {seq_len}")
        tokens[at : at + n] = toks
        segment_ids[at : at + n] = k + 1
        positions[at : at + n] = np.arange(n, dtype=np.int32)
        loss_mask[at : at + n] = np.frombuffer(ex["loss_mask"], dtype=np.uint8)
        first = len(meta["images"])
        slot_len = ex.get("slot_len")
        for start, jpeg in zip(ex["image_starts"] or [], ex["images"] or [], strict=True):
            meta["images"].append({"slot_start": at + int(start), "slot_len": slot_len, "example": k})
            jpegs.append(jpeg)
        meta["examples"].append(
            {
                "stream": ex["stream"],
                "id": ex["id"],
                "part": ex["part"],
                "lineage": ex["lineage"],
                "span": [at, at + n],
                "images": list(range(first, len(meta["images"]))),
            }
        )
        at += n
    members = {
        "json": json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(),
        "loss_mask.npy": npy_bytes(loss_mask),
        "positions.npy": npy_bytes(positions),
        "segment_ids.npy": npy_bytes(segment_ids),
        "tokens.npy": npy_bytes(tokens),
    }
    for i, jpeg in enumerate(jpegs):
        members[f"img{i:03d}.jpg"] = jpeg
    return members


def tar_bytes(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """A tar of ``(key, {extension: bytes})`` samples in order, members sorted, metadata fixed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), MTIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


SHARD_STATS = pa.schema(
    [
        pa.field("shard_part", pa.int32()),
        pa.field("shard_index", pa.int32()),
        pa.field("path", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("sequences", pa.int64()),
        pa.field("images", pa.int64()),
        pa.field("tokens", pa.string()),  # JSON {stream: non-pad tokens}
        pa.field("examples", pa.string()),  # JSON {stream: examples}
        pa.field("mix", pa.string()),  # JSON {mix group: realized share in the mix unit}
        pa.field("full", pa.bool_()),  # False: its partition's last shard, short of shard_size
        pa.field("resumed", pa.bool_()),  # written by an earlier run of the same plan
    ]
)


def shard_tar(
    rows: list[dict], part: int, index: int, seq_len: int, pad_id: int, slot_len: int
) -> tuple[bytes, dict]:
    """The tar of one shard from its placed examples (rows with ``seq``, ``slot`` and the EXAMPLE
    payload) and its counts: sequences, images, tokens and examples per stream."""
    rows = sorted(rows, key=lambda r: (r["seq"], r["slot"]))
    by_seq: dict[int, list[dict]] = {}
    tokens: dict[str, int] = {}
    examples: dict[str, int] = {}
    images = 0
    for r in rows:
        r["slot_len"] = slot_len
        by_seq.setdefault(r["seq"], []).append(r)
        tokens[r["stream"]] = tokens.get(r["stream"], 0) + r["n_tokens"]
        examples[r["stream"]] = examples.get(r["stream"], 0) + 1
        images += r["n_images"]
    samples = [(sample_key(part, index, q), assemble(by_seq[q], seq_len, pad_id)) for q in sorted(by_seq)]
    counts = {"sequences": len(by_seq), "images": images, "tokens": tokens, "examples": examples}
    return tar_bytes(samples), counts
