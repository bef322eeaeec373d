"""Assemble packed sequences and write them as deterministic WebDataset tars (``mm1data/packed-v1``).

One sample per sequence, key ``<shard:05d>-<seq:06d>``; members ``tokens.npy``,
``segment_ids.npy``, ``positions.npy``, ``loss_mask.npy``, ``json`` and ``img000.jpg``... The tar
is built in memory with fixed mtime, uid, gid, mode and owner names, members sorted per sample, so
the same plan gives the same bytes on any worker.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pyarrow as pa

FORMAT = "mm1data/packed-v1"
VERSION = 1
MTIME = 0  # every tar member: 1970-01-01, uid/gid 0, mode 0644, no owner names


def shard_name(shard: int) -> str:
    """File name of shard ``shard`` inside the dataset folder."""
    return f"shard-{shard:05d}.tar"


def sample_key(shard: int, seq: int) -> str:
    """WebDataset key of sequence ``seq`` of shard ``shard`` (no dots)."""
    return f"{shard:05d}-{seq:06d}"


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
        pa.field("shard", pa.int64()),
        pa.field("path", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("sequences", pa.int64()),
        pa.field("images", pa.int64()),
        pa.field("tokens", pa.string()),  # JSON {stream: non-pad tokens}
        pa.field("examples", pa.string()),  # JSON {stream: examples}
    ]
)


def write_shard(
    table: pa.Table,
    output: str,
    seq_len: int,
    pad_id: int,
    slot_len: int,
    plan_fingerprint: str = "",
) -> pa.Table:
    """Ray Data ``map_groups`` UDF: the placements of one shard (payload + ``shard``, ``seq``,
    ``slot`` columns) → the tar at ``output/shard-NNNNN.tar``; returns its :data:`SHARD_STATS` row.

    The tar appears whole or not at all (written beside and renamed locally; one PUT on S3), and
    then its marker ``output/_work/shards/<name>.json`` (stats row + ``plan_fingerprint``) is
    written, so a resumed build skips it."""
    from mm1data.io.fs import fsspec_fs, is_s3
    from mm1data.runners.workdir import WorkDir

    rows = table.to_pylist()
    rows.sort(key=lambda r: (r["seq"], r["slot"]))
    shard = rows[0]["shard"]
    samples, tokens, examples, images = [], {}, {}, 0
    by_seq: dict[int, list[dict]] = {}
    for r in rows:
        r["slot_len"] = slot_len
        by_seq.setdefault(r["seq"], []).append(r)
        tokens[r["stream"]] = tokens.get(r["stream"], 0) + r["n_tokens"]
        examples[r["stream"]] = examples.get(r["stream"], 0) + 1
        images += r["n_images"]
    for seq in sorted(by_seq):
        samples.append((sample_key(shard, seq), assemble(by_seq[seq], seq_len, pad_id)))
    data = tar_bytes(samples)
    name = shard_name(shard)
    fs, root = fsspec_fs(output)
    final = f"{root}/{name}"
    if is_s3(output):
        fs.pipe_file(final, data)
    else:
        fs.makedirs(root, exist_ok=True)
        tmp = f"{final}.partial"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, final)
    row = {
        "shard": shard,
        "path": name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "sequences": len(by_seq),
        "images": images,
        "tokens": json.dumps(dict(sorted(tokens.items()))),
        "examples": json.dumps(dict(sorted(examples.items()))),
    }
    WorkDir(output).commit_shard(name, row, plan_fingerprint)
    return pa.Table.from_pylist([row], schema=SHARD_STATS)
