"""The packed loader: seeded order, exact split across ranks and workers, resume at any world size, s3://."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm1data.errors import UsageError
from mm1data.shards.format import shard_name
from mm1data.train.data import (
    PackedBatches,
    PackedDataset,
    SampleOrder,
    ShardReader,
    collate,
    decode_jpeg_into,
    index_tar,
    index_tar_with_tarfile,
    make_loader,
    open_dataset,
)


def _keys(
    ds: PackedDataset,
    steps: int,
    *,
    world: int = 1,
    cursor: int = 0,
    micro: int = 1,
    workers: int = 0,
    global_batch: int = 4,
    seed: int = 0,
) -> list[list[str]]:
    """Keys each step sees, ranks joined in rank order."""
    per_step: list[list[str]] = [[] for _ in range(steps)]
    for rank in range(world):
        batches = PackedBatches(
            ds,
            global_batch=global_batch,
            micro_batch=micro,
            rank=rank,
            world=world,
            seed=seed,
            cursor=cursor,
            steps=steps,
        )
        for i, mb in enumerate(make_loader(batches, workers=workers, prefetch=2)):
            per_step[i // batches.accum] += mb["keys"]
    return per_step


def test_order_is_a_seeded_permutation_of_every_epoch() -> None:
    sizes = [5, 3, 7]
    epoch = [SampleOrder(sizes, seed=1)[p] for p in range(15)]
    assert sorted(epoch) == sorted((s, i) for s, n in enumerate(sizes) for i in range(n))
    assert epoch == [SampleOrder(sizes, seed=1)[p] for p in range(15)]
    assert epoch != [SampleOrder(sizes, seed=2)[p] for p in range(15)]
    second = [SampleOrder(sizes, seed=1)[p] for p in range(15, 30)]
    assert sorted(second) == sorted(epoch) and second != epoch


def test_ranks_and_workers_split_the_global_batch_exactly(packed_dataset: Path) -> None:
    ds = open_dataset(str(packed_dataset))
    one = _keys(ds, 9)  # 36 sequences = one epoch
    assert len({k for step in one for k in step}) == ds.sequences == 36
    two_ranks = _keys(ds, 9, world=2)
    assert [Counter(s) for s in two_ranks] == [Counter(s) for s in one]
    assert _keys(ds, 9, world=4, workers=2) == one  # 4 ranks × 1, 2 loader processes each: same order


def test_resume_with_another_world_size_sees_exactly_the_rest(packed_dataset: Path) -> None:
    ds = open_dataset(str(packed_dataset))
    straight = _keys(ds, 12, micro=2)  # 48 positions: crosses into the second epoch
    first = _keys(ds, 5, world=2)
    rest = _keys(ds, 7, world=1, cursor=5 * 4, micro=2)
    assert [Counter(s) for s in first + rest] == [Counter(s) for s in straight]
    seen = [k for s in first + rest for k in s]
    assert Counter(seen[:36]) == Counter({k: 1 for k in seen[:36]}) and len(set(seen[:36])) == 36


def test_batches_carry_slots_streams_and_images(packed_dataset: Path) -> None:
    ds = open_dataset(str(packed_dataset))
    mb = next(iter(make_loader(PackedBatches(ds, global_batch=4, micro_batch=4, steps=1), workers=0)))
    assert mb["tokens"].shape == (4, ds.seq_len) and mb["images"].shape[1:] == (56, 56, 3)
    slots = (mb["image_index"][:, None] + np.arange(ds.image_tokens)).flatten()
    assert (mb["tokens"].flatten()[slots] == ds.special_tokens["image"]).all()
    assert int((mb["tokens"] == ds.special_tokens["image"]).sum()) == len(slots)
    assert set(mb["stream_ids"][mb["segment_ids"] > 0].tolist()) == {0, 1}
    assert ds.streams == ("caption", "text")


def test_batch_images_are_the_jpegs_decoded_in_order_even_after_their_shard_is_evicted(
    packed_dataset: Path,
) -> None:
    ds = open_dataset(str(packed_dataset))
    reader = ShardReader(ds, keep=1)  # each read unmaps the previous shard while its samples still view it
    samples = [reader.read(shard, i) for i in range(3) for shard in range(3)]
    mb = collate(samples, ds.streams, ds.image_size)
    expected = [
        np.asarray(Image.open(io.BytesIO(bytes(j))).convert("RGB")) for s in samples for j in s["jpegs"]
    ]
    assert len(expected) >= 3 and mb["images"].shape == (len(expected), 56, 56, 3)
    assert np.array_equal(mb["images"].numpy(), np.stack(expected))


def test_grayscale_jpegs_become_rgb_and_a_wrong_size_is_refused(packed_dataset: Path) -> None:
    ds = open_dataset(str(packed_dataset))
    jpeg = next(j for i in range(12) for j in ShardReader(ds).read(0, i)["jpegs"])
    buf = io.BytesIO()
    Image.open(io.BytesIO(bytes(jpeg))).convert("L").save(buf, format="JPEG")
    out = np.zeros((56, 56, 3), np.uint8)
    decode_jpeg_into(buf.getvalue(), out)
    gray = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    assert all(np.array_equal(out[..., c], gray) for c in range(3)) and gray.std() > 10
    with pytest.raises(ValueError, match="image is 56x56, expected 32x32"):
        decode_jpeg_into(jpeg, np.empty((32, 32, 3), np.uint8))


def test_bad_dataset_paths_fail_with_one_line(tmp_path: Path, packed_dataset: Path) -> None:
    with pytest.raises(UsageError, match="no manifest.json"):
        open_dataset(str(tmp_path))
    manifest = json.loads((packed_dataset / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest | {"format": "other/v9"}))
    with pytest.raises(UsageError, match="expected 'mm1data/packed-v1'"):
        open_dataset(str(tmp_path))
    with pytest.raises(UsageError, match="not a multiple"):
        PackedBatches(open_dataset(str(packed_dataset)), global_batch=6, micro_batch=4)


def test_reads_s3_through_fsspec(
    packed_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    import fsspec
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("MM1DATA_CACHE", str(tmp_path / "cache"))
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("train-bucket")
        for f in sorted(packed_dataset.iterdir()):  # manifest.json last, as a build publishes it
            if f.name != "manifest.json":
                fs.put_file(str(f), f"train-bucket/ds/{f.name}")
        fs.put_file(str(packed_dataset / "manifest.json"), "train-bucket/ds/manifest.json")
        fsspec.config.conf.clear()
        remote = open_dataset("s3://train-bucket/ds")
        assert _keys(remote, 3) == _keys(open_dataset(str(packed_dataset)), 3)
        assert len(list((tmp_path / "cache").glob("*.tar"))) >= 1
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_header_walk_indexes_tars_as_tarfile_does(packed_dataset: Path, tmp_path: Path, fmt: int) -> None:
    shard = str(packed_dataset / shard_name(0, 0))
    assert index_tar(shard) == index_tar_with_tarfile(shard) and len(index_tar(shard)) == 12
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        names = ["a/000.json", "a/000.img000.jpg", "b" * 120 + "/001.json", "002.tokens.npy", "x/y/003.json"]
        for i, name in enumerate(names):  # a 129-character name: ustar prefix, GNU long name, pax header
            info = tarfile.TarInfo(name)
            info.size = 700 * i
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert index_tar(str(path)) == index_tar_with_tarfile(str(path))
    data = bytearray(path.read_bytes())
    data[5] ^= 1  # a flipped bit in the first header's name
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad tar header checksum at byte 0"):
        index_tar(str(path))
