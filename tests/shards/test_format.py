"""The packed-v1 contract module: names and the key rule, the typed manifest (validation, streaming
writer in bounded memory), the Energon metadata files, and agreement with schemas/packed-v1.md."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tracemalloc
from pathlib import Path

import pytest

from mm1data.shards import format as fmt
from mm1data.shards.energon import energon_metadata, write_energon_streams
from mm1data.shards.format import (
    Header,
    Manifest,
    ManifestError,
    Mix,
    ShardEntry,
    Tokenizer,
    Totals,
    read_manifest,
    sample_key,
    shard_name,
    split_key,
    verify,
    write_manifest,
)
from tests.train.shards_helper import write_packed_dataset

DOC = Path(__file__).resolve().parents[2] / "schemas" / "packed-v1.md"
HEADER = Header(
    seq_len=64,
    image_tokens=4,
    max_images=2,
    image_size=32,
    jpeg_quality=90,
    tokenizer=Tokenizer(name="gpt2", sha256="ab" * 32, vocab_size=50261),
    special_tokens={"pad": 50257, "eos": 50256, "image": 50258},
    mix=Mix(target={"caption": 0.5, "text": 0.5}, unit="tokens", realized={"caption": 0.49, "text": 0.51}),
    epochs={"caption": 1.0, "text": 0.4},
    partitions=4,
)


def entry(part: int, index: int, full: bool = True) -> ShardEntry:
    return ShardEntry(
        path=shard_name(part, index),
        bytes=10240 + index,
        sha256=f"{part * 100000 + index:064x}",
        sequences=3,
        images=2,
        tokens={"caption": 60, "text": 70},
        examples={"caption": 2, "text": 1},
        mix={"caption": 0.461538, "text": 0.538462},
        full=full,
    )


def test_names_carry_the_partition_and_keys_have_no_dots() -> None:
    assert shard_name(3, 17) == "shard-00003-00017.tar"
    assert sample_key(3, 17, 5) == "00003-00017-000005" and "." not in sample_key(99999, 99999, 999999)
    assert fmt.parse_shard_name("shard-00003-00017.tar") == (3, 17)
    assert fmt.tar_index_name("shard-00003-00017.tar") == "shard-00003-00017.tar.idx"


@pytest.mark.parametrize(
    "name",
    ["00000-00001-000002.tokens.npy", "a/b.c/key.img000.jpg", "k.tar.gz", "dir/key", "noext", ".hidden.json"],
)
def test_split_key_is_webdatasets_base_plus_ext(name: str) -> None:
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    assert split_key(name) == ((key, ext) if key is not None else None)


def test_manifest_round_trips_and_the_streaming_writer_gives_the_same_bytes() -> None:
    shards = [entry(0, 0), entry(0, 1, full=False), entry(2, 0)]
    buf = io.StringIO()
    totals = write_manifest(buf, HEADER, iter(shards), attainable_fill=0.81234567)
    m = Manifest.from_json(json.loads(buf.getvalue()))
    assert m.header == HEADER and m.shards == tuple(shards) and m.totals == totals
    assert buf.getvalue() == json.dumps(m.to_json(), indent=1)
    assert (totals.shards, totals.sequences, totals.images, totals.bytes) == (3, 9, 6, 3 * 10240 + 1)
    assert totals.tokens_by_stream == {"caption": 180, "text": 210} and totals.examples == 9
    assert totals.fill == round(390 / (9 * 64), 6) and totals.attainable_fill == 0.812346
    assert m.streams == ("caption", "text")
    empty = io.StringIO()
    write_manifest(empty, HEADER, [])
    assert Manifest.from_json(json.loads(empty.getvalue())).totals.shards == 0


def test_the_manifest_writer_holds_no_per_shard_state() -> None:
    """Peak memory hardly moves from 500 to 5,000 shard entries (holding them would add ~10 MB;
    what moves is the json encoder's garbage awaiting the cycle collector)."""

    class Sink(io.TextIOBase):
        def write(self, s: str) -> int:
            return len(s)

    def peak(n: int) -> int:
        entries = (entry(i // 1000, i % 1000) for i in range(n))
        tracemalloc.start()
        totals = write_manifest(Sink(), HEADER, entries)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert totals.shards == n and totals.sequences == 3 * n
        return top

    peak(10)  # imports and caches first
    small, large = peak(500), peak(5000)
    assert large < small + 2**20 and large < 2 * 2**20, (small, large)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m | {"format": "other/v9"}, "expected 'mm1data/packed-v1'"),
        (lambda m: m | {"version": 2}, "this mm1data reads version 1"),
        (lambda m: {k: v for k, v in m.items() if k != "seq_len"}, "missing field 'seq_len'"),
        (lambda m: m | {"seq_len": "64"}, "seq_len: expected int"),
        (lambda m: m | {"epochs": {"video": 1.0}}, "unknown stream 'video'"),
        (lambda m: m | {"shards": m["shards"][::-1]}, "is not after"),
        (lambda m: m | {"shards": m["shards"][:1]}, "totals"),
        (lambda m: _first_shard(m, path="../x.tar"), "not a safe relative path"),
        (lambda m: _first_shard(m, path="s3://bucket/x.tar"), "not a plain relative path"),
        (lambda m: _first_shard(m, sha256="XYZ"), "sha256 must be 64 lowercase hex digits"),
        (lambda m: _first_shard(m, full="yes"), "full: expected bool"),
    ],
)
def test_a_manifest_that_breaks_the_contract_is_refused_with_the_field_named(change, message) -> None:
    buf = io.StringIO()
    write_manifest(buf, HEADER, [entry(0, 0), entry(0, 1)])
    with pytest.raises(ManifestError, match=re.escape(message)):
        Manifest.from_json(change(json.loads(buf.getvalue())))


def _first_shard(m: dict, **change) -> dict:
    return m | {"shards": [m["shards"][0] | change, *m["shards"][1:]]}


def test_the_writer_refuses_unsorted_shards() -> None:
    with pytest.raises(ManifestError, match="is not after"):
        write_manifest(io.StringIO(), HEADER, [entry(0, 1), entry(0, 0)])


def test_split_yaml_collapses_runs_per_partition_and_energon_parses_both_files() -> None:
    shards = [entry(0, 0), entry(0, 1), entry(0, 2, full=False), entry(1, 0), entry(3, 4), entry(3, 5)]
    info, split = io.StringIO(), io.StringIO()
    assert write_energon_streams(info, split, ((e.path, e.sequences) for e in shards)) == 6
    assert split.getvalue() == (
        "split_parts:\n  train:\n"
        "  - 'shard-00000-{00000..00002}.tar'\n"
        "  - 'shard-00001-00000.tar'\n"
        "  - 'shard-00003-{00004..00005}.tar'\n"
        "exclude: []\n"
    )
    assert json.loads(info.getvalue()) == {"shard_counts": {e.path: 3 for e in shards}}
    energon = pytest.importorskip("megatron.energon")
    import braceexpand
    from megatron.energon.eyaml import load_yaml
    from megatron.energon.flavors.webdataset.structs import WebdatasetInfo, WebdatasetSplits
    from megatron.energon.typed_converter import JsonParser

    assert energon
    parser = JsonParser(strict=True)
    splits = parser.raw_to_typed(load_yaml(split.getvalue().encode()), WebdatasetSplits)
    names = [n for pattern in splits.split_parts["train"] for n in braceexpand.braceexpand(pattern)]
    assert names == [e.path for e in shards]
    counts = parser.raw_to_typed(json.loads(info.getvalue()), WebdatasetInfo).shard_counts
    assert counts == {e.path: 3 for e in shards}


def test_the_module_and_schemas_packed_v1_md_agree() -> None:
    doc = DOC.read_text()
    members = re.findall(r"^\| `<key>\.([^`]+)`(?:, `[^`]+`, …)? \| ([^|]+) \|", doc, re.M)
    table = {m: t.strip() for m, t in members}
    for member, dtype in fmt.ARRAYS.items():
        assert table[member].split()[0] == dtype.name, member
    assert table[fmt.META] == "UTF-8 JSON" and table[fmt.image_member(0)] == "JPEG"
    assert set(table) == {*fmt.ARRAYS, fmt.META, fmt.image_member(0)}

    def fields_of(section: str) -> set[str]:
        body = doc.split(f"<!-- {section} -->", 2)[1]
        return {f for row in re.findall(r"^\| (`[^|]+`) \|", body, re.M) for f in re.findall(r"`(\w+)`", row)}

    assert fields_of("manifest") == {f.name for f in dataclasses.fields(Manifest)}
    assert fields_of("shard entry") == {f.name for f in dataclasses.fields(ShardEntry)}
    assert fields_of("totals") == {f.name for f in dataclasses.fields(Totals)}
    for stream in fmt.STREAMS:
        assert f"`{stream}`" in doc
    assert fmt.shard_name(0, 0) in doc and fmt.sample_key(0, 0, 0) in doc


def test_readers_follow_the_manifests_shard_list_across_partitions_with_gaps(
    shared_data: Path, tmp_path: Path
) -> None:
    from mm1data.train.data import open_dataset

    names = [(0, 0), (0, 1), (2, 0)]
    out = write_packed_dataset(tmp_path / "ds", shared_data, names=names, seqs_per_shard=4)
    m = read_manifest(str(out))
    assert [e.path for e in m.shards] == [shard_name(*n) for n in names]
    assert [e.full for e in m.shards] == [True, False, False]
    assert verify(str(out)) == []
    ds = open_dataset(str(out))
    assert [s.url.rsplit("/", 1)[1] for s in ds.shards] == [shard_name(*n) for n in names]
    assert ds.sequences == 12 and ds.streams == ("caption", "text")
    assert energon_metadata(m)[".nv-meta/split.yaml"] == (out / ".nv-meta/split.yaml").read_bytes()
