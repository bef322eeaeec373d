"""Fuzz-style hostile input: over 1,000 mutated records through ingest, no crash, all accounted for.

Mutations (seeded, so failures reproduce): bit flips in real JPEGs, bit flips in tar headers,
truncated JSON lines and random bytes. Every record ends up kept or rejected with a reason.
"""

from __future__ import annotations

import io
import json
import random
import tarfile

import pyarrow.dataset as pads
from click.testing import CliRunner

from mm1data.cli import main

SEED = 20261124


def _flip_bits(data: bytes, rng: random.Random, n: int) -> bytes:
    out = bytearray(data)
    for _ in range(n):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _tar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_corpus(root, shared_data) -> dict[str, int]:
    """Write the mutated corpus under ``root``; return how many records of each kind it holds."""
    rng = random.Random(SEED)
    jpegs = [p.read_bytes() for p in sorted((shared_data / "a-coco-mini" / "val2017").glob("*.jpg"))[:20]]
    samples = []
    for i in range(400):
        data = _flip_bits(rng.choice(jpegs), rng, rng.choice([1, 4, 32, 256]))
        if i % 10 == 0:
            data = data[: rng.randrange(len(data))]
        samples.append((f"s{i:04d}", {"jpg": data, "txt": f"caption {i}".encode()}))
    (root / "flipped_jpegs.tar").write_bytes(_tar(samples))

    small = [(f"h{i}", {"jpg": jpegs[i % 20], "txt": b"ok"}) for i in range(5)]
    clean = _tar(small)
    for t in range(20):  # tar headers: flip bits in the first 512-byte header block(s)
        mutated = bytearray(clean)
        for _ in range(rng.choice([1, 8, 64])):
            i = rng.randrange(512)  # the first header block: where damage hurts most
            mutated[i] ^= 1 << rng.randrange(8)
        (root / f"header_{t:02d}.tar").write_bytes(bytes(mutated))

    lines = []
    for i in range(400):
        doc = json.dumps({"id": f"t{i}", "text": f"document number {i} " * rng.randrange(1, 50)})
        lines.append(doc[: rng.randrange(len(doc))].encode() if i % 2 else doc.encode())
    for _ in range(300):
        lines.append(bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b" "))
    rng.shuffle(lines)
    (root / "hostile.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return {"jpeg_samples": 400, "header_tars": 20, "text_lines": 700}


def test_over_a_thousand_mutated_records_never_crash_and_are_all_accounted_for(
    ray_local, shared_data, tmp_path
):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    counts = make_corpus(corpus, shared_data)
    assert counts["jpeg_samples"] + counts["text_lines"] + counts["header_tars"] * 5 >= 1000
    out = tmp_path / "out"
    args = ["ingest", "--quiet", "--output", str(out), "--captions", f"webdataset:{corpus}/*.tar",
            "--text", str(corpus / "hostile.jsonl")]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    streams = json.loads((out / "stats.json").read_text())["streams"]
    print(json.dumps(streams, indent=1))
    for name, s in streams.items():
        assert s["read"] == s["kept"] + s["rejected"], name
    assert streams["text"]["read"] == counts["text_lines"]
    assert streams["caption"]["read"] >= counts["jpeg_samples"]
    assert streams["caption"]["rejected"] > 0 and streams["text"]["rejected"] > 0
    rejects = pads.dataset(out / "rejects").to_table()
    assert rejects.num_rows == streams["caption"]["rejected"] + streams["text"]["rejected"]
    assert all(reason for reason in rejects.column("reason").to_pylist())
    kept = pads.dataset(out / "caption").to_table()
    assert kept.num_rows == streams["caption"]["kept"]
    assert all(w > 0 for w in kept.column("width").to_pylist())


def test_mutated_records_through_build_never_crash_and_are_all_accounted_for(
    ray_local, shared_data, tmp_path
):
    """The same hostile corpus through the whole build (filter, dedup, tokenize, pack, write):
    the build finishes, read = kept + rejected for every stream, every reject has a reason and
    is on disk, and the shards it wrote pass their own integrity check."""
    from mm1data.shards.format import verify

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    counts = make_corpus(corpus, shared_data)
    out = tmp_path / "out"
    args = ["build", "--quiet", "--mix", "caption=1", "--output", str(out),
            "--captions", f"webdataset:{corpus}/*.tar", "--text", str(corpus / "hostile.jsonl")]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "stats.json").read_text())
    streams = stats["streams"]
    assert streams["text"]["read"] == counts["text_lines"]
    for name, s in streams.items():
        assert s["read"] == s["kept"] + s["rejected"], name
        assert sum(s["rejected_by_reason"].values()) == s["rejected"], name
        rejects = pads.dataset(out / "rejects" / name).to_table()
        assert rejects.num_rows >= s["rejected"], name  # plus item-level rejects, if any
        assert all(rejects.column("reason").to_pylist()), name
    examples = stats["examples"]
    for name, n in examples["rendered"].items():
        unused = sum(v for k, v in examples["rejected_by_reason"].items() if k.startswith(f"{name}/mix/"))
        assert examples["used"].get(name, 0) + unused == n, name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["sequences"] > 0
    assert verify(str(out)) == []
