"""Caption readers on real COCO / img2dataset data and on the bad-input corpus."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.ingest.conftest import read_rows, reasons


def test_coco_reads_every_image_with_its_five_human_captions(shared_data):
    ann = shared_data / "a-coco-mini" / "annotations"
    rows = read_rows("caption", "coco", ann / "captions_train2017.json") + read_rows(
        "caption", "coco", ann / "captions_val2017.json"
    )
    assert len(rows) == 159
    assert all(r["reject"] is None for r in rows)
    assert sum(len(r["captions"]) for r in rows) == 795
    assert {c["provenance"] for r in rows for c in r["captions"]} == {"human"}
    first = rows[0]
    assert len(first["image_sha256"]) == 64 and first["format"] == "jpeg"
    assert first["width"] > 0 and first["lineage"]["offset"] == 0


def test_url_only_parquet_rows_are_all_rejected_no_image_bytes(shared_data):
    rows = read_rows("caption", "parquet", shared_data / "a-img2dataset-captions" / "test_10000.parquet")
    assert len(rows) == 10_000
    assert set(reasons(rows).values()) == {"no_image_bytes"}
    assert rows[0]["reject"]["detail"].startswith("url=http")


def test_bad_tar_samples_get_specific_reasons(bad_dir):
    got = reasons(read_rows("caption", "webdataset", bad_dir / "captions.tar"))
    assert got == {
        "captions.tar:good": None,
        "captions.tar:truncated_jpeg": "image_undecodable",
        "captions.tar:corrupt_jpeg": "image_undecodable",
        "captions.tar:truncated_png": "image_undecodable",
        "captions.tar:corrupt_png": "image_undecodable",
        "captions.tar:zero_byte": "image_empty",
        "captions.tar:bomb": "decompression_bomb",
        "captions.tar:huge_caption": "caption_too_long",
        "captions.tar:bad_utf8_caption": "invalid_utf8",
        "captions.tar:bad_json": "invalid_json",
        "captions.tar:no_image_no_url": "no_image_bytes",
    }


def test_truncated_tar_keeps_what_was_read_and_rejects_the_cut_sample(bad_dir):
    rows = read_rows("caption", "webdataset", bad_dir / "truncated.tar")
    got = reasons(rows)
    assert got["truncated.tar:good"] is None
    assert got["truncated.tar:huge_caption"] == "tar_truncated"
    assert len(rows) == 8


def test_parquet_with_image_bytes_column(tmp_path, shared_data):
    jpg = next((shared_data / "a-coco-mini" / "val2017").glob("*.jpg")).read_bytes()
    table = pa.table({"key": ["a", "b"], "jpg": [jpg, b""], "caption": ["a street scene", "empty image"]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    got = reasons(read_rows("caption", "parquet", tmp_path / "pairs.parquet"))
    assert got == {"pairs:a": None, "pairs:b": "image_empty"}


def test_webdataset_json_member_supplies_url_and_caption(tmp_path, shared_data):
    jpg = next((shared_data / "a-coco-mini" / "train2017").glob("*.jpg")).read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (
            ("00001.jpg", jpg),
            ("00001.json", b'{"url": "http://x/y.jpg", "caption": "alt"}'),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "shard.tar").write_bytes(buf.getvalue())
    (row,) = read_rows("caption", "webdataset", tmp_path / "shard.tar")
    assert row["url"] == "http://x/y.jpg"
    assert row["captions"] == [{"text": "alt", "provenance": "alt_text"}]


_PEAK_WHILE_READING = """
import sys
from mm1data.config import IngestConfig
from mm1data.ingest import read_unit
from mm1data.ingest.base import Unit
unit = Unit(stream="caption", format="parquet", path=sys.argv[1])
rows = sum(t.num_rows for t in read_unit(unit, IngestConfig()))
hwm = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]  # ru_maxrss can carry the parent's
print(rows, int(hwm) * 1024)
"""


def _peak_while_reading(path) -> tuple[int, int]:
    """(rows read, peak RSS in bytes) of a fresh process that reads ``path`` as a caption unit."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _PEAK_WHILE_READING, str(path)], capture_output=True, text=True, check=True
    )
    rows, peak = out.stdout.split()
    return int(rows), int(peak)


def test_parquet_is_read_a_row_group_at_a_time(tmp_path):
    """A reader's memory stays flat from 10 MB to 80 MB of incompressible images (a reader that
    keeps what it has read would hold 70 MB more); every row still comes out."""
    rng = np.random.default_rng(0)
    peaks = {}
    for n in (512, 4096):
        blobs = [rng.bytes(20_000) for _ in range(n)]
        table = pa.table({"key": [f"k{i}" for i in range(n)], "jpg": blobs, "caption": ["a cat"] * n})
        path = tmp_path / f"pairs-{n}.parquet"
        pq.write_table(table, path, row_group_size=256)
        rows, peaks[n] = _peak_while_reading(path)
        assert rows == n
    assert peaks[4096] < peaks[512] + 24 * 2**20, peaks
