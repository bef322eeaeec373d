"""The index, group and components steps without Ray, on real images across streams: the bundled
sample's interleaved stand-in images are COCO pictures (some re-encoded as PNG) and must go as
duplicates of exactly the COCO caption pairs that sample/ATTRIBUTION.md names."""

from __future__ import annotations

import re

import pyarrow as pa

from mm1data.config import DedupConfig
from mm1data.dedup.phases import find_duplicates
from tests.dedup.conftest import caption_table, interleaved_table


def test_sample_stand_in_images_are_removed_as_duplicates_of_their_coco_originals(repo_root, coco_images):
    attribution = (repo_root / "sample" / "ATTRIBUTION.md").read_text()
    originals = dict(re.findall(r"interleaved/images/(\S+) \| stand-in: COCO (\d+)\.jpg", attribution))
    assert len(originals) == 11
    names = sorted(originals)
    images = [(repo_root / "sample" / "interleaved" / "images" / n).read_bytes() for n in names]
    tables = {
        "caption": caption_table(coco_images),
        "interleaved": interleaved_table([("doc", "a page about many things", images)]),
    }
    removals = find_duplicates(tables, DedupConfig(exact_text=False, minhash=False))
    expected = {f"interleaved:doc#{1 + k}": f"caption:{originals[n]}" for k, n in enumerate(names)}
    assert {m: r[1] for m, r in removals.items()} == expected  # no caption pair is removed
    for member, (reason, _, score) in removals.items():
        print(member, reason, score)
        assert reason in ("exact_duplicate", "near_duplicate")
        assert score >= 1 - DedupConfig().hamming_radius / 64


def test_removals_do_not_depend_on_batching_or_row_order(dolma_docs, coco_images, monkeypatch):
    from mm1data.dedup import phases
    from mm1data.runners.shuffle import LocalTables
    from tests.dedup.conftest import change_words, degrade, text_table

    monkeypatch.setattr(phases, "ROWS_PER_PARTITION", 97)  # many partitions, as on a cluster
    monkeypatch.setattr(phases, "LOCAL_EDGES", 0)  # components by large-star / small-star rounds

    long = [d for d in dolma_docs if len(d[1].split()) >= 100][:120]
    docs = long + [(f"zz{k}", change_words(long[k][1], 0.01, k)) for k in range(0, 120, 7)]
    caps = coco_images[:30] + [(f"zz{k}", degrade(coco_images[k][1])) for k in range(0, 30, 4)]
    cfg = DedupConfig()

    def removals(batches: int, reverse: bool) -> dict:
        order = (lambda xs: xs[::-1]) if reverse else (lambda xs: xs)
        text, cap = text_table(order(docs)), caption_table(order(caps))
        parts = {}
        for name, table in (("text", text), ("caption", cap)):
            step = -(-table.num_rows // batches)
            parts[name] = [table.slice(s, step) for s in range(0, table.num_rows, step)]
        tables = {s: pa.concat_tables(bs) for s, bs in parts.items()}
        return find_duplicates(tables, cfg, eng=LocalTables(partitioned=True))

    one = removals(1, False)
    assert sum(m.startswith("text:zz") for m in one) == 18  # every planted text copy goes
    assert sum(m.startswith("caption:zz") for m in one) == 8  # every degraded image goes
    assert removals(7, True) == one
