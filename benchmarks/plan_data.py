"""The shared-data corpus ``benchmarks/plan.py`` and ``tests/test_plan.py`` plan and build.

Real data from ``../shared/data-candidates`` (see its SOURCES.md), one source per stream kind:

- **captions**: COCO-mini train2017 + val2017 (159 real JPEGs, 5 human captions each);
- **interleaved**: the 107 real MMC4 documents (2,072 sentences, 417 image slots). MMC4 ships no
  image bytes, so each slot gets a stand-in: one of the 80 real uncaptioned COCO val2017 JPEGs,
  assigned by a seeded draw, so an image appears in about five slots (the stream then has real
  exact-duplicate images, as web crawls do);
- **text**: the 697 Dolma Common Crawl documents and the 30 OLMo C4 documents.

Only the MMC4 image folder is written (links to the COCO files when the filesystem allows);
everything else is read in place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from mm1data.config import Sources, SourceSpec

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data-candidates"
MMC4 = "b-interleaved/mmc4_docs_no_face_shard_151_v3.partial.jsonl"


def mmc4_images(shared: Path, out: Path, seed: int = 0) -> Path:
    """An image folder for the MMC4 docs: every ``image_name`` → a seeded stand-in COCO JPEG."""
    out.mkdir(parents=True, exist_ok=True)
    pool = sorted((shared / "a-coco-mini" / "val2017-uncaptioned").glob("*.jpg"))
    rng = random.Random(seed)
    with open(shared / MMC4) as f:
        names = [info["image_name"] for line in f for info in json.loads(line)["image_info"]]
    for name in names:
        target = out / name
        if not target.exists():
            src = rng.choice(pool)
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
    return out


def shared_sources(shared: Path, work: Path) -> Sources:
    """The corpus as :class:`~mm1data.config.Sources` (writes the MMC4 image folder under ``work``)."""
    coco = shared / "a-coco-mini"
    images = mmc4_images(shared, work / "mmc4-images")
    return Sources(
        captions=tuple(
            SourceSpec(str(coco / "annotations" / f"captions_{split}.json"), "coco", str(coco / split))
            for split in ("train2017", "val2017")
        ),
        interleaved=(SourceSpec(str(shared / MMC4), "mmc4", str(images)),),
        text=(
            SourceSpec(str(next((shared / "c-text").glob("dolma-CC-*.jsonl.gz"))), name="dolma"),
            SourceSpec(str(shared / "c-text" / "olmo-c4-sample.0*.json.gz"), name="c4"),
        ),
    )


STREAM_ORDER = ("caption", "interleaved", "text")


def actual_values(stats: dict) -> dict[str, float]:
    """What a full build made, keyed like :func:`projected_values`."""
    t = stats["totals"]
    out = {f"kept records/{s}": stats["streams"][s]["kept"] for s in STREAM_ORDER if s in stats["streams"]}
    out |= {f"tokens/{s}": t["tokens_by_stream"].get(s, 0) for s in STREAM_ORDER}
    return out | {"sequences": t["sequences"], "shards": stats["shards"], "bytes": t["bytes"]}


def projected_values(plan: dict) -> dict[str, tuple[float, float, float]]:
    """(point, low, high) of what a plan projects, for the quantities :func:`actual_values` has."""
    p = plan["projected"]

    def triple(key: str, sub: str | None = None) -> tuple[float, float, float]:
        get = (lambda k: p[k].get(sub, 0)) if sub else (lambda k: p[k])
        return get(key), get(f"{key}_low"), get(f"{key}_high")

    out = {f"kept records/{s}": triple("kept_records_by_stream", s) for s in p["kept_records_by_stream"]}
    out |= {f"tokens/{s}": triple("tokens_by_stream", s) for s in STREAM_ORDER}
    return out | {k: triple(k) for k in ("sequences", "shards", "bytes")}


def naive_values(plan: dict) -> dict[str, float]:
    """The by-hand extrapolation: the sample's own counts divided by the sample fraction."""
    f = plan["sample"]["fraction"]
    out = {f"kept records/{s}": st["kept"] / f for s, st in plan["streams"].items()}
    packed = plan["sample"]["packed"]
    out |= {f"tokens/{s}": n / f for s, n in packed.get("tokens_by_stream", {}).items()}
    return out | {"sequences": packed["sequences"] / f, "shards": packed["shards"] / f}
