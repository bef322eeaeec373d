"""The streaming shard writer: the same bytes as a tar built in memory, its sha256 and size
counted while writing, the index stored, nothing left half-written."""

from __future__ import annotations

import hashlib

from mm1data.shards.format import tar_index_name
from mm1data.shards.writer import tar_bytes, write_shard


def _samples(n: int):
    for i in range(n):
        yield f"s{i:05d}", {"json": b'{"i": %d}' % i, "jpg": bytes([i % 256]) * (1000 + 37 * i)}


def test_a_streamed_shard_has_the_bytes_of_one_built_in_memory(tmp_path):
    tar, index = tar_bytes(_samples(40))
    size, sha256 = write_shard(str(tmp_path), "shard-00000-00000.tar", _samples(40))
    written = (tmp_path / "shard-00000-00000.tar").read_bytes()
    assert written == tar
    assert (size, sha256) == (len(tar), hashlib.sha256(tar).hexdigest())
    assert (tmp_path / tar_index_name("shard-00000-00000.tar")).read_bytes() == index
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard-00000-00000.tar",
        "shard-00000-00000.tar.idx",
    ]


def test_a_failed_write_leaves_no_shard(tmp_path):
    def broken():
        yield from _samples(3)
        raise RuntimeError("payload went missing")

    try:
        write_shard(str(tmp_path), "shard-00000-00001.tar", broken())
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []  # no shard, no index, no partial file
