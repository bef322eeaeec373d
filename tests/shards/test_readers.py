"""Hugging Face ``datasets`` and Ray Data read every sample of a real build, arrays and images, with
the schema (HF) or decoder (Ray) of :mod:`mm1data.shards.readers` and no conversion of the data."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from mm1data.shards.format import ARRAYS, read_manifest
from mm1data.shards.inspect import Sample, read_shard_bytes
from mm1data.shards.readers import hf_features, ray_decode


def tar_samples(out) -> tuple[list[str], dict[str, Sample]]:
    manifest = read_manifest(str(out))
    urls = [str(out / e.path) for e in manifest.shards]
    samples = {s.key: s for e in manifest.shards for s in read_shard_bytes((out / e.path).read_bytes())}
    assert len(samples) == manifest.totals.sequences
    return urls, samples


def rgb(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


def test_hugging_face_datasets_loads_every_sample_of_a_real_build(
    sample_reference_build, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    out, _ = sample_reference_build
    urls, samples = tar_samples(out)
    max_images = read_manifest(str(out)).max_images
    ds = datasets.load_dataset(
        "webdataset",
        data_files={"train": urls},
        split="train",
        features=hf_features(max_images),
        cache_dir=str(tmp_path / "hf"),
    )
    assert sorted(ds["__key__"]) == sorted(samples)
    for row in ds:
        s = samples[row["__key__"]]
        for member in ARRAYS:
            got = np.asarray(row[member], dtype=ARRAYS[member])
            assert np.array_equal(got, getattr(s, member.removesuffix(".npy"))), member
        assert row["json"] == s.meta
        for i in range(max_images):
            image = row[f"img{i:03d}.jpg"]
            if i < len(s.jpegs):
                assert np.array_equal(np.asarray(image.convert("RGB")), rgb(s.jpegs[i]))
            else:
                assert image is None


def test_ray_data_reads_every_sample_of_a_real_build(sample_reference_build, ray_local):
    import ray.data

    out, _ = sample_reference_build
    urls, samples = tar_samples(out)
    rows = ray.data.read_webdataset(urls, decoder=ray_decode).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(samples)
    for row in rows:
        s = samples[row["__key__"]]
        for member in ARRAYS:
            assert row[member].dtype == ARRAYS[member]
            assert np.array_equal(row[member], getattr(s, member.removesuffix(".npy"))), member
        assert json.loads(row["json"]) == s.meta
        assert row["images"].dtype == np.uint8 and len(row["images"]) == len(s.jpegs)
        for got, jpeg in zip(row["images"], s.jpegs, strict=True):
            assert np.array_equal(got, rgb(jpeg))
