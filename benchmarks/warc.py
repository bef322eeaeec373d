"""WARC → documents: mm1data vs datatrove (``WarcReader`` + ``Trafilatura``), same files, one process.

Corpus: the shared real WARCs (the dolma wget sample, the pywb iana.org crawl, the resiliparse
Common Crawl and ClueWeb09 files: 102 HTML pages) concatenated ``--repeat`` times into one
multi-member ``.warc.gz`` (gzip members concatenate into a valid WARC).

- mm1data: :func:`mm1data.ingest.warc.read_warc` (FastWARC, HTML sniffing and charset, OBELICS DOM
  simplification, text and ``<img>`` in reading order, image records looked up in the same file and
  decoded) → Arrow batches of interleaved documents; no image fetching.
- datatrove: ``WarcReader`` (warcio, cchardet, libmagic) then ``Trafilatura.extract`` on each page
  (called directly, as its ``run`` would in its sandbox process) → text only, images dropped.

Both run single-threaded in this process, one after the other, over the whole file; pages/s per
core is the corpus's HTML pages (as mm1data counts them: every HTML response, redirects included)
over CPU seconds of this process (wall seconds are printed too: on a shared machine the CPU figure
is the fair one). "pages" is how many pages each tool took up (datatrove's reader skips pages it
cannot decode), "docs" how many came out with content. Prints both, and the ratio.

    python benchmarks/warc.py [--repeat 10]

Needs the ``bench`` extra (``pip install -e .[bench]``: datatrove, warcio, faust-cchardet,
python-magic, trafilatura).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MM1DATA_SHARED_DATA", REPO.parent / "shared" / "data-candidates"))
FILES = [
    "b-interleaved/sample-0000.warc.gz",
    "b-interleaved/sample-0001.warc.gz",
    "b-interleaved/warc/pywb-iana.warc.gz",
    "b-interleaved/warc/resiliparse-warcfile.warc.gz",
    "b-interleaved/warc/resiliparse-clueweb-quirk.warc.gz",
]
NOT_PAGES = {"not_a_response", "not_html", "html_revisit", "warc_bad_gzip", "warc_bad_record"}


def make_corpus(folder: Path, repeat: int) -> Path:
    """One ``.warc.gz`` with every shared WARC ``repeat`` times."""
    path = folder / "corpus.warc.gz"
    blobs = [(DATA / f).read_bytes() for f in FILES]
    with open(path, "wb") as out:
        for _ in range(repeat):
            for blob in blobs:
                out.write(blob)
    return path


def timed(fn) -> tuple[object, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - w0, time.process_time() - c0


def run_mm1data(path: Path) -> dict:
    from mm1data.config import IngestConfig
    from mm1data.ingest.base import Unit
    from mm1data.ingest.warc import read_warc

    pages = docs = images = texts = 0
    for table in read_warc(Unit("interleaved", "warc", str(path)), IngestConfig()):
        for row in table.select(["items", "reject"]).to_pylist():
            reason = (row["reject"] or {}).get("reason")
            if reason in NOT_PAGES:
                continue
            pages += 1
            if reason is None:
                docs += 1
                images += sum(i["kind"] == "image" for i in row["items"])
                texts += sum(i["kind"] == "text" for i in row["items"])
    return {"pages": pages, "docs": docs, "images kept": images, "text items": texts}


def run_datatrove(path: Path) -> dict:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    reader = WarcReader(str(path.parent), glob_pattern=path.name)
    extractor = Trafilatura(favour_precision=True)
    pages = docs = errors = 0
    for doc in reader.run():
        pages += 1
        try:
            text = extractor.extract(doc.text)
        except Exception:  # noqa: BLE001 - datatrove counts these as clean_error and goes on
            text, errors = None, errors + 1
        docs += bool(text)
    return {"pages": pages, "docs": docs, "images kept": 0, "text items": docs, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=10, help="copies of the shared WARCs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_corpus(Path(tmp), args.repeat)
        size = path.stat().st_size / 2**20
        print(f"corpus: {len(FILES)} shared WARCs x {args.repeat} = {size:.1f} MiB (gzip), one process each")
        print()
        mm1, mm1_wall, mm1_cpu = timed(lambda: run_mm1data(path))
        dt, dt_wall, dt_cpu = timed(lambda: run_datatrove(path))
    rows = [("mm1data read_warc (text + images in order)", mm1, mm1_wall, mm1_cpu),
            ("datatrove WarcReader + Trafilatura (text only)", dt, dt_wall, dt_cpu)]  # fmt: skip
    corpus_pages = mm1["pages"]
    print(f"{'':48} {'pages':>6} {'docs':>6} {'images':>7} {'wall s':>7} {'cpu s':>7} {'pages/s/core':>13}")
    for name, r, wall, cpu in rows:
        print(
            f"{name:48} {r['pages']:>6} {r['docs']:>6} {r['images kept']:>7} {wall:>7.2f} {cpu:>7.2f} "
            f"{corpus_pages / cpu:>13.1f}"
        )
    if dt.get("errors"):
        print(f"(datatrove: Trafilatura raised on {dt['errors']} pages)")
    ratio = dt_cpu / mm1_cpu
    print(f"\nmm1data / datatrove, HTML pages per CPU second: {ratio:.2f}x (goal >= 2x)")


if __name__ == "__main__":
    sys.exit(main())
