"""Megatron-Energon reads an mm1data build with no conversion, and its ``.tar.idx`` files are the
ones ``energon prepare`` writes for the same tars (needs the ``test`` extra: megatron-energon)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm1data.shards.format import read_manifest, shard_name, verify
from mm1data.shards.inspect import read_shard_bytes
from tests.train.shards_helper import write_packed_dataset

pytest.importorskip("megatron.energon")


def energon_samples(root: Path) -> list:
    """Every sample of ``root`` through Energon's own loader, cooked by mm1data's cooker."""
    from megatron.energon import DefaultTaskEncoder, WorkerConfig, get_loader, get_train_dataset

    from mm1data.shards.energon_cook import COOKER

    class PackedEncoder(DefaultTaskEncoder):
        cookers = [COOKER]

    ds = get_train_dataset(
        str(root),
        worker_config=WorkerConfig(rank=0, world_size=1, num_workers=0),
        batch_size=None,
        shuffle_buffer_size=None,
        max_samples_per_sequence=None,
        task_encoder=PackedEncoder(),
        repeat=False,
    )
    return list(get_loader(ds))


def assert_energon_reads_every_sample(root: Path) -> int:
    manifest = read_manifest(str(root))
    expected = {s.key: s for e in manifest.shards for s in read_shard_bytes((root / e.path).read_bytes())}
    cooked = energon_samples(root)
    assert sorted(c.__key__ for c in cooked) == sorted(expected)  # every sample exactly once
    for c in cooked:
        s = expected[c.__key__]
        assert c.__subflavors__ == {"mm1data_format": "mm1data/packed-v1"}
        assert np.array_equal(c.tokens.numpy(), s.tokens) and c.tokens.dtype.is_floating_point is False
        assert np.array_equal(c.segment_ids.numpy(), s.segment_ids)
        assert np.array_equal(c.positions.numpy(), s.positions)
        assert np.array_equal(c.loss_mask.numpy(), s.loss_mask)
        assert c.examples == s.meta["examples"]
        assert c.image_slots.tolist() == [im["slot_start"] for im in s.meta["images"]]
        assert len(c.images) == len(s.jpegs)
        for got, jpeg in zip(c.images, s.jpegs, strict=True):
            with Image.open(io.BytesIO(jpeg)) as im:
                assert np.array_equal(got.permute(1, 2, 0).numpy(), np.asarray(im.convert("RGB")))
    return len(cooked)


def test_energon_loads_a_real_build_and_gives_back_every_sample(sample_reference_build) -> None:
    out, stats = sample_reference_build
    assert assert_energon_reads_every_sample(out) == stats["totals"]["sequences"]


def test_tar_idx_files_equal_energon_prepares_own(sample_reference_build, tmp_path: Path) -> None:
    from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator

    out, _ = sample_reference_build
    names = [e.path for e in read_manifest(str(out)).shards]
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in names:  # the tars only: Energon indexes them itself
        shutil.copyfile(out / name, copy / name)
    WebdatasetPreparator.prepare_dataset(copy, names, split_parts_ratio=[("train", 1.0)], workers=1)
    for name in names:
        assert (copy / f"{name}.idx").read_bytes() == (out / f"{name}.idx").read_bytes(), name
    theirs = json.loads((copy / ".nv-meta/.info.json").read_text())["shard_counts"]
    ours = json.loads((out / ".nv-meta/.info.json").read_text())["shard_counts"]
    assert theirs == ours


def test_energon_follows_shards_of_several_partitions(shared_data: Path, tmp_path: Path) -> None:
    names = [(0, 0), (0, 1), (3, 2)]
    out = write_packed_dataset(tmp_path / "ds", shared_data, names=names, seqs_per_shard=5)
    assert verify(str(out)) == []
    assert (out / ".nv-meta/split.yaml").read_text().count("shard-") == 2  # one range, one name
    assert assert_energon_reads_every_sample(out) == 15
    assert {shard_name(*n) for n in names} == {e.path for e in read_manifest(str(out)).shards}
