"""Decontamination against eval texts and images (pure batch check, no Ray)."""

from __future__ import annotations

from mm1data.config import DedupConfig
from mm1data.dedup.decontaminate import build_index, check_batch
from tests.dedup.conftest import caption_table, degrade, text_table


def test_docs_quoting_an_eval_text_and_eval_images_are_flagged(dolma_docs, coco_images, tmp_path):
    docs = [d for d in dolma_docs if len(d[1].split()) >= 200][:20]
    question = " ".join(docs[5][1].split()[50:90])  # a 40-word eval item quoted inside doc 5
    evals = tmp_path / "eval.txt"
    evals.write_text(question + "\nan unrelated question about nothing in this corpus at all\n")
    eval_img = tmp_path / "eval.jpg"
    eval_img.write_bytes(degrade(coco_images[3][1]))
    cfg = DedupConfig(decontaminate_texts=(str(evals),), decontaminate_images=(str(eval_img),))
    index = build_index(cfg)
    text = check_batch(text_table(docs), "text", index, cfg).to_pylist()
    hits = {r["member"]: r for r in text if r["eval"] is not None}
    assert list(hits) == [f"text:{docs[5][0]}"]
    assert hits[f"text:{docs[5][0]}"]["eval"] == f"{evals}#0" and hits[f"text:{docs[5][0]}"]["score"] == 1.0
    caps = check_batch(caption_table(coco_images[:10]), "caption", index, cfg).to_pylist()
    assert [r["member"] for r in caps if r["eval"] is not None] == [f"caption:{coco_images[3][0]}"]
