"""``mm1data dedup`` on Ray: cross-stream images, reasons, conservation, and the same survivors as
the in-process reference run on one batch."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mm1data.cli import main
from tests.dedup.conftest import caption_table, change_words, degrade, interleaved_table, text_table


@pytest.fixture(scope="module")
def tables(dolma_docs, coco_images):
    """Small real streams with planted duplicates of every kind."""
    docs = [d for d in dolma_docs if len(d[1].split()) >= 100][:40]
    text = docs + [
        ("zz-exact", docs[0][1].upper()),  # exact after normalization
        ("zz-near", change_words(docs[1][1], 0.01, 7)),
    ]
    images = coco_images[:12]
    caption = images + [("zz-same-bytes", images[0][1]), ("zz-degraded", degrade(images[1][1]))]
    inter = [
        ("doc-a", docs[2][1], [images[2][1], coco_images[20][1]]),  # images[2] is also a caption pair
        ("doc-b", change_words(docs[3][1], 0.5, 1), [degrade(images[3][1])]),
    ]
    return {
        "text": text_table(text),
        "caption": caption_table(caption),
        "interleaved": interleaved_table(inter),
    }


def _write(tables, root, parts: int):
    for stream, table in tables.items():
        (root / stream).mkdir(parents=True)
        step = -(-table.num_rows // parts)
        for k in range(parts):
            part = table.slice(k * step, step)
            kept = part.filter(pc.is_null(part["reject"])).drop_columns(["reject"])
            pq.write_table(kept, root / stream / f"part-{k}.parquet")


def _rejects(out):
    rows = pq.read_table(out / "rejects").to_pylist() if (out / "rejects").exists() else []
    return {r["id"]: (r["stream"], r["reason"], r["duplicate_of"]) for r in rows}


def _in_process(tables) -> dict:
    """The same steps in this process on one batch per stream (no Ray): the reference run."""
    from mm1data.config import DedupConfig
    from mm1data.dedup.phases import find_duplicates

    out = {}
    for member, (reason, keep, _) in find_duplicates(tables, DedupConfig()).items():
        stream, rid = member.split(":", 1)
        if "#" in rid and stream == "interleaved":  # item: doc#position -> the doc's first item reject
            stream, rid = "interleaved_item", rid.rsplit("#", 1)[0] + "#0"
        out[rid] = (stream, reason, keep.split(":", 1)[1])
    return out


def test_dedup_command_finds_every_kind_and_is_deterministic(ray_local, tables, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _write(tables, src, 3)
    result = CliRunner().invoke(main, ["dedup", "--input", str(src), "--output", str(out)])
    assert result.exit_code == 0, result.output
    print(result.output)
    rejects, stats = _rejects(out), json.loads((out / "stats.json").read_text())
    assert rejects == _in_process(tables)  # Ray over 3 files = one batch in process: same survivors
    doc0, doc1 = tables["text"].column("id")[0].as_py(), tables["text"].column("id")[1].as_py()
    assert rejects["zz-exact"] == ("text", "exact_duplicate", doc0)
    assert rejects["zz-near"] == ("text", "near_duplicate", doc1)
    img0, img1, img2, img3 = (tables["caption"].column("id")[i].as_py() for i in range(4))
    assert rejects["zz-same-bytes"] == ("caption", "exact_duplicate", img0)
    assert rejects["zz-degraded"] == ("caption", "near_duplicate", img1)
    # the caption pair keeps the picture; the interleaved doc loses that image item, not the doc
    assert rejects["doc-a#0"] == ("interleaved_item", "exact_duplicate", img2)
    assert rejects["doc-b#0"] == ("interleaved_item", "near_duplicate", img3)
    assert "doc-a" not in rejects and "doc-b" not in rejects
    for s in stats["streams"].values():
        assert s["read"] == s["kept"] + s["rejected"]
    for ph in stats["phases"]:
        assert ph["in"] == ph["kept"] + sum(ph["dropped"].values())
    by = {ph["phase"]: ph["dropped"] for ph in stats["phases"]}
    text_rejects = [r for r in rejects.values() if r[0] in ("text", "interleaved")]
    image_rejects = [r for r in rejects.values() if r[0] in ("caption", "interleaved_item")]
    # the Dolma sample itself holds exact and near copies: counts match the rejects written
    assert by["exact_text"]["exact_duplicate"] == sum(r[1] == "exact_duplicate" for r in text_rejects)
    assert by["minhash_text"]["near_duplicate"] == sum(r[1] == "near_duplicate" for r in text_rejects)
    assert by["exact_image"] == {"exact_duplicate": 2}
    assert by["image_hash"] == {"near_duplicate": 2}
    assert len(image_rejects) == 4


def test_recipe_dedup_section_is_validated(tmp_path):
    from mm1data.config import load_recipe
    from mm1data.errors import UsageError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("dedup: {bands: 16, rows: 8, hamming_radius: 6}\n")
    cfg = load_recipe(recipe).dedup
    assert (cfg.bands, cfg.rows, cfg.hamming_radius) == (16, 8, 6)
    recipe.write_text("dedup: {bands: 10, rows: 8}\n")
    with pytest.raises(UsageError, match="bands × rows"):
        load_recipe(recipe)


def test_missing_input_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(
        main, ["dedup", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "error:" in result.output
