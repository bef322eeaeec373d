"""`mm1data inspect`: the per-sequence integrity check, rendering, image export and manifest view.

Shards come from tests/train/shards_helper.py (a contract-conformant writer on real COCO images,
Wikipedia text and the GPT-2 tokenizer); corrupted copies must fail loudly.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mm1data.cli import main
from mm1data.shards.format import read_manifest, shard_name
from mm1data.shards.inspect import Contract, check_sample, read_bytes, read_shard_bytes, shard_summary
from tests.train.shards_helper import write_packed_dataset

SHARD0, SHARD1 = shard_name(0, 0), shard_name(0, 1)


@pytest.fixture(scope="module")
def dataset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packed")
    return write_packed_dataset(out, shared_data, n_shards=2, seqs_per_shard=6)


def _rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a shard, passing every (name, bytes) member through ``change``."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for info in tin:
            data = tin.extractfile(info).read()
            name, data = change(info.name, data)
            new = tarfile.TarInfo(name)
            new.size = len(data)
            tout.addfile(new, io.BytesIO(data))
    return dst


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def test_a_contract_shard_passes_every_check(dataset: Path) -> None:
    summary = shard_summary(str(dataset / SHARD0))
    assert summary["ok"], summary["problems"]
    assert summary["sequences"] == 6 and summary["images"] > 0
    assert set(summary["tokens"]) == {"caption", "text"} and 0 < summary["fill"] <= 1


def test_cli_summary_renders_images_and_example_separators(dataset: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", "shard", str(dataset / SHARD1), "--sample", "1"])
    assert result.exit_code == 0, result.output
    assert "integrity  ok" in result.output and "sequences  6" in result.output
    assert "‹image 56×56›" in result.output and "──── example 1: " in result.output
    assert "──── padding:" in result.output


def test_cli_json_is_machine_readable(dataset: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", "shard", str(dataset / SHARD0), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["ok"] is True and body["sequences"] == 6 and body["problems"] == []


@pytest.mark.parametrize(
    ("member", "corrupt", "message"),
    [
        ("segment_ids.npy", lambda a: np.where(np.arange(len(a)) == 3, 0, a), "segment id 0 outside"),
        ("positions.npy", lambda a: a + (np.arange(len(a)) == 5), "positions do not reset"),
        ("loss_mask.npy", lambda a: np.ones_like(a), "loss mask"),
        ("tokens.npy", lambda a: np.where(np.arange(len(a)) == 2, 0, a), "<image> tokens"),
    ],
)
def test_a_broken_sequence_fails_loudly_with_exit_1(
    dataset: Path, tmp_path: Path, member: str, corrupt, message: str
) -> None:
    first = read_shard_bytes(read_bytes(str(dataset / SHARD0)))[0].key

    def change(name: str, data: bytes) -> tuple[str, bytes]:
        if name == f"{first}.{member}":
            a = np.load(io.BytesIO(data), allow_pickle=False)
            data = _npy(corrupt(a).astype(a.dtype))
        return name, data

    bad = _rewrite(dataset / SHARD0, tmp_path / SHARD0, change)
    (tmp_path / "manifest.json").write_bytes((dataset / "manifest.json").read_bytes())
    result = CliRunner().invoke(main, ["inspect", "shard", str(bad)])
    assert result.exit_code == 1
    assert "integrity check FAILED" in result.output and message in result.output


def test_a_wrongly_sized_image_is_caught(dataset: Path) -> None:
    manifest = read_manifest(str(dataset))
    sample = next(s for s in read_shard_bytes(read_bytes(str(dataset / SHARD0))) if s.jpegs)
    contract = dataclasses.replace(Contract.from_manifest(manifest), image_size=64)
    assert any("expected 64²" in p for p in check_sample(sample, contract))


def test_export_images_writes_every_image_under_the_folder(dataset: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["inspect", "shard", str(dataset / SHARD0), "--export-images", str(tmp_path / "x")]
    )
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "x").iterdir())
    assert files and all(f.suffix == ".jpg" and f.parent == tmp_path / "x" for f in files)
    assert len(files) == shard_summary(str(dataset / SHARD0))["images"]


def test_a_member_name_that_climbs_out_is_refused(dataset: Path, tmp_path: Path) -> None:
    evil = _rewrite(
        dataset / SHARD0,
        tmp_path / "evil.tar",
        lambda name, data: (f"../{name}" if name.endswith(".jpg") else name, data),
    )
    result = CliRunner().invoke(main, ["inspect", "shard", str(evil), "--export-images", str(tmp_path / "x")])
    assert result.exit_code == 1 and "unsafe member name" in result.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_inspect_dataset_shows_the_manifest_and_verify_catches_a_flipped_byte(
    dataset: Path, tmp_path: Path
) -> None:
    ok = CliRunner().invoke(main, ["inspect", "dataset", str(dataset), "--verify"])
    assert ok.exit_code == 0, ok.output
    assert "mm1data/packed-v1" in ok.output and SHARD1 in ok.output and "verify ok: 2 shards" in ok.output
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    blob = bytearray((copy / SHARD1).read_bytes())
    blob[1000] ^= 0xFF
    (copy / SHARD1).write_bytes(bytes(blob))
    (copy / f"{SHARD0}.idx").write_bytes((copy / f"{SHARD0}.idx").read_bytes()[:-8])
    bad = CliRunner().invoke(main, ["inspect", "dataset", str(copy), "--verify"])
    assert bad.exit_code == 1 and "verify FAILED: 2 problems" in bad.output
    assert f"MISMATCH {SHARD1}: sha256" in bad.output
    assert f"MISMATCH {SHARD0}.idx: differs from the sample offsets" in bad.output


def test_inspect_dataset_without_manifest_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["inspect", "dataset", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json" in result.output
