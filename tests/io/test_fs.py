"""URL -> filesystem on a real moto S3 server: endpoint from env or argument; pyarrow, webdataset, Ray."""

from __future__ import annotations

import io
import socket
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from mm1data.io.fs import arrow_fs, fsspec_fs, redact, register_webdataset_s3


def real_jpeg(shared: Path) -> bytes:
    return next(iter(sorted((shared / "a-coco-mini/val2017").glob("*.jpg")))).read_bytes()


def dead_endpoint() -> str:
    """An http endpoint nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_local_paths_give_the_local_filesystem(tmp_path):
    fs, path = fsspec_fs(str(tmp_path / "x"))
    assert fs.protocol[0] == "file" and path == str(tmp_path / "x")
    assert arrow_fs(str(tmp_path / "x")) == (None, str(tmp_path / "x"))
    assert arrow_fs(f"file://{tmp_path}/x") == (None, str(tmp_path / "x"))


def test_other_fsspec_urls_are_wrapped_for_pyarrow():
    fs, path = arrow_fs("memory://mm1data-test/a.bin")
    assert isinstance(fs, pafs.PyFileSystem)
    with fs.open_output_stream(path) as f:
        f.write(b"abc")
    assert fsspec_fs("memory://mm1data-test/a.bin")[0].cat_file(path) == b"abc"


def test_s3_round_trip_through_s3fs_and_pyarrow_with_endpoint_from_the_environment(s3_bucket, shared_data):
    data = real_jpeg(shared_data)
    fs, path = fsspec_fs(f"s3://{s3_bucket}/img/a.jpg")
    assert path == f"{s3_bucket}/img/a.jpg"
    fs.pipe_file(path, data)
    pa_fs, pa_path = arrow_fs(f"s3://{s3_bucket}/img/a.jpg")
    assert isinstance(pa_fs, pafs.S3FileSystem) and pa_path == path
    with pa_fs.open_input_file(pa_path) as f:
        assert f.read() == data
    with pa_fs.open_output_stream(f"{s3_bucket}/img/b.jpg") as f:
        f.write(data[::-1])
    assert fs.cat_file(f"{s3_bucket}/img/b.jpg") == data[::-1]


def test_endpoint_argument_overrides_the_environment(s3_bucket, s3_env, monkeypatch):
    good = s3_env["endpoint"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_endpoint())
    fs, path = fsspec_fs(f"s3://{s3_bucket}/k", endpoint_url=good)
    fs.pipe_file(path, b"hello")
    pa_fs, _ = arrow_fs(f"s3://{s3_bucket}/k", endpoint_url=good)
    with pa_fs.open_input_file(path) as f:
        assert f.read() == b"hello"
    # AWS_ENDPOINT_URL_S3 (service-specific) wins over AWS_ENDPOINT_URL, as in the AWS SDKs
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", good)
    assert fsspec_fs(f"s3://{s3_bucket}/k")[0].cat_file(path) == b"hello"


def test_webdataset_reads_s3_shards_through_the_registered_handler(s3_bucket, shared_data, tmp_path):
    import webdataset as wds

    jpg = real_jpeg(shared_data)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in (("k0.jpg", jpg), ("k0.txt", b"a cat"), ("k1.jpg", jpg[:5000]), ("k1.txt", b"b")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fs, _ = fsspec_fs(f"s3://{s3_bucket}")
    fs.put_file(str(tmp_path / "s.tar"), f"{s3_bucket}/s.tar")
    register_webdataset_s3()
    register_webdataset_s3()  # idempotent
    samples = list(wds.WebDataset(f"s3://{s3_bucket}/s.tar", shardshuffle=False))
    assert [(s["__key__"], s["jpg"], s["txt"]) for s in samples] == [
        ("k0", jpg, b"a cat"),
        ("k1", jpg[:5000], b"b"),
    ]


def test_webdataset_writes_s3_shards_through_the_registered_handler(s3_bucket, shared_data):
    import webdataset as wds

    jpg = real_jpeg(shared_data)
    register_webdataset_s3()
    with wds.TarWriter(f"s3://{s3_bucket}/out/shard-000.tar") as sink:
        sink.write({"__key__": "k0", "jpg": jpg, "txt": b"a dog"})
    fs, _ = fsspec_fs(f"s3://{s3_bucket}")
    with tarfile.open(fileobj=io.BytesIO(fs.cat_file(f"{s3_bucket}/out/shard-000.tar"))) as tar:
        assert tar.getnames() == ["k0.jpg", "k0.txt"]
        assert tar.extractfile("k0.jpg").read() == jpg


def test_ray_data_reads_and_writes_parquet_on_s3_with_arrow_fs(ray_local, s3_bucket):
    import ray

    table = pa.table({"id": list(range(100)), "text": [f"doc {i}" for i in range(100)]})
    fs, root = arrow_fs(f"s3://{s3_bucket}/pq")
    pq.write_table(table, f"{root}/part-0.parquet", filesystem=fs)
    ray.data.read_parquet(f"{root}/part-0.parquet", filesystem=fs).write_parquet(f"{root}/out", filesystem=fs)
    back = pq.read_table(f"{root}/out", filesystem=fs)  # read back without Ray: one Ray job is enough
    assert back.sort_by("id").to_pydict() == table.to_pydict()


def test_redact_masks_credentials_in_text_urls_and_exceptions(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-XYZ")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-abcdef")
    assert redact("failed with s3cr3t-value-XYZ and tok-abcdef") == "failed with *** and ***"
    assert redact("https://user:pa55@minio.local:9000/b/k") == "https://***@minio.local:9000/b/k"
    signed = (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAABCDEFGHIJKLMNOP%2F2026&X-Amz-Signature=deadbeef"
    )
    assert redact(signed) == "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***"
    assert redact("key AKIAABCDEFGHIJKLMNOP used") == "key *** used"
    assert redact(PermissionError("denied for s3cr3t-value-XYZ")) == "PermissionError: denied for ***"
    assert redact("s3://bucket/prefix/shard-00000.tar") == "s3://bucket/prefix/shard-00000.tar"


@pytest.mark.parametrize("url", ["s3://bucket/a/b/", "s3a://bucket/a/b"])
def test_s3_paths_drop_the_scheme_and_trailing_slash(url, s3_env):
    assert fsspec_fs(url)[1] == "bucket/a/b"
    assert arrow_fs(url)[1] == "bucket/a/b"
