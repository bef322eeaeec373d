"""Rebuild the bundled licence-clean sample in ``sample/`` from ``../shared/data-candidates``.

Run once by maintainers (``python scripts/make_sample.py``); the output is committed. Picks
COCO images under CC BY 2.0 / CC BY-SA 2.0 (licence ids 4 and 5), downscaled to 384 px on the
long side; MMC4 docs (ODC-BY) whose text passes mm1data's default text filters, with disjoint
COCO images standing in for their (absent) pictures; and the 30 C4 docs (ODC-BY).
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data-candidates"
OUT = REPO / "sample"
CLEAN_LICENSES = {4, 5}
N_CAPTION_IMAGES = 40
N_MMC4_DOCS = 10


def shrink(data: bytes, long_side: int = 384) -> bytes:
    """Downscale a JPEG so its long side is ``long_side`` px, re-encoded at quality 85."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, optimize=True)
    return buf.getvalue()


def clean_coco_images() -> list[tuple[dict, list[str], Path, dict]]:
    """(image record, its captions, file path, licence) for every CC BY / BY-SA COCO image."""
    out = []
    for split in ("train2017", "val2017"):
        doc = json.loads((SHARED / "a-coco-mini" / "annotations" / f"captions_{split}.json").read_text())
        licenses = {lic["id"]: lic for lic in doc["licenses"]}
        caps: dict[int, list[str]] = {}
        for ann in doc["annotations"]:
            caps.setdefault(ann["image_id"], []).append(ann["caption"])
        for img in sorted(doc["images"], key=lambda r: r["id"]):
            if img["license"] in CLEAN_LICENSES:
                path = SHARED / "a-coco-mini" / split / img["file_name"]
                out.append((img, caps.get(img["id"], []), path, licenses[img["license"]]))
    return out


def passing_mmc4_docs(n: int) -> list[dict]:
    """The first ``n`` MMC4 docs whose joined text passes the default text filters."""
    import pyarrow as pa

    from mm1data.config import FilterConfig
    from mm1data.filters import filter_stages
    from mm1data.schemas import TEXT_DOC

    lines = (
        (SHARED / "b-interleaved" / "mmc4_docs_no_face_shard_151_v3.partial.jsonl").read_text().splitlines()
    )
    docs = [json.loads(line) for line in lines]
    rows = [
        {"id": str(i), "text": " ".join(d["text_list"]), "lineage": {"source": "mmc4", "offset": i}}
        for i, d in enumerate(docs)
    ]
    table = pa.Table.from_pylist(rows, schema=TEXT_DOC)
    for stage in filter_stages(FilterConfig(), "text"):
        stage.setup()
        table = stage(table)
    alive = [r["reject"] is None for r in table.select(["reject"]).to_pylist()]
    chosen = [d for d, ok in zip(docs, alive, strict=True) if ok and 1 <= len(d["image_info"]) <= 3]
    return chosen[:n]


def main() -> None:
    """Write sample/ (captions, interleaved, text) and its ATTRIBUTION.md."""
    images = clean_coco_images()
    caption_imgs, standins = images[:N_CAPTION_IMAGES], images[N_CAPTION_IMAGES:]
    attribution = []

    cap_dir = OUT / "captions" / "images"
    cap_dir.mkdir(parents=True, exist_ok=True)
    coco = {
        "info": {"description": "mm1data sample: CC BY / CC BY-SA COCO 2017 images"},
        "licenses": [],
        "images": [],
        "annotations": [],
    }
    seen_licenses = {}
    for img, caps, path, lic in caption_imgs:
        (cap_dir / img["file_name"]).write_bytes(shrink(path.read_bytes()))
        seen_licenses[lic["id"]] = lic
        coco["images"].append({k: img[k] for k in ("id", "file_name", "license", "coco_url", "flickr_url")})
        for j, c in enumerate(caps):
            coco["annotations"].append({"image_id": img["id"], "id": img["id"] * 10 + j, "caption": c})
        attribution.append(
            f"| captions/images/{img['file_name']} | {img['flickr_url']} | {lic['name']} ({lic['url']}) |"
        )
    coco["licenses"] = list(seen_licenses.values())
    (OUT / "captions" / "captions.json").write_text(json.dumps(coco, indent=1))

    mm_dir = OUT / "interleaved" / "images"
    mm_dir.mkdir(parents=True, exist_ok=True)
    docs = passing_mmc4_docs(N_MMC4_DOCS)
    pool = iter(standins)
    with (OUT / "interleaved" / "mmc4_sample.jsonl").open("w") as f:
        for d in docs:
            for info in d["image_info"]:
                stand = next(pool, None)
                if stand is None:
                    continue
                img, _, path, lic = stand
                (mm_dir / info["image_name"]).write_bytes(shrink(path.read_bytes()))
                attribution.append(
                    f"| interleaved/images/{info['image_name']} | stand-in: COCO {img['file_name']}, "
                    f"{img['flickr_url']} | {lic['name']} ({lic['url']}) |"
                )
            f.write(json.dumps({k: d[k] for k in ("url", "text_list", "image_info")}) + "\n")

    text_dir = OUT / "text"
    text_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(text_dir / "c4_sample.jsonl.gz", "wt") as out:
        for i in (1, 2, 3):
            with gzip.open(SHARED / "c-text" / f"olmo-c4-sample.0{i}.json.gz", "rt") as src:
                out.writelines(src)
    (OUT / "ATTRIBUTION.images.md").write_text("\n".join(attribution) + "\n")  # rows for ATTRIBUTION.md
    print(
        f"{len(caption_imgs)} caption images, {len(docs)} MMC4 docs, images left {len(list(pool))}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
