"""The download phase inside `mm1data ingest --download` on Ray: every planted case rejected with its
exact reason, conservation, each distinct URL fetched once across streams, resume, --retry-failed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from mm1data.config import Recipe, Sources, SourceSpec
from mm1data.ingest.job import run_ingest
from tests.download.conftest import loopback_config, planted


def write_inputs(tmp: Path, srv, images: dict[str, bytes]) -> tuple[Path, Path, list[tuple[str, str | None]]]:
    """A caption table (LAION columns URL/TEXT plus a sha256 column) with every planted case, and
    an MMC4 file whose first doc shares a URL with a caption pair: (table, mmc4, (url, reason) rows)."""
    names = list(images)
    cases = planted(srv, names)
    shared = srv.url(f"img/{names[20]}")
    good_hash = hashlib.sha256(images[names[21]]).hexdigest()
    cases += [
        (srv.url(f"img/{names[21]}"), None),  # right sha256
        (srv.url(f"img/{names[22]}"), "hash_mismatch"),  # wrong sha256
        (cases[0][0], None),  # a second pair with the first URL
        (shared, None),  # also an image of the MMC4 doc
    ]
    hashes = [None] * len(cases)
    hashes[-4], hashes[-3] = good_hash, "0" * 64
    table = pa.table(
        {
            "URL": [u for u, _ in cases],
            "TEXT": [f"a photo of thing {i}" for i in range(len(cases))],
            "sha256": hashes,
        }
    )
    pq.write_table(table, tmp / "pairs.parquet")
    docs = [
        {
            "url": "http://example.org/page",
            "text_list": ["First sentence of the page.", "Second one.", "Third one."],
            "image_info": [
                {"raw_url": shared, "matched_text_index": 0},
                {"raw_url": srv.url("404/gone.jpg"), "matched_text_index": 1},
                {"raw_url": srv.url(f"img/{names[23]}"), "matched_text_index": 2},
            ],
        },
        {
            "url": "http://example.org/only-a-picture",
            "text_list": [""],
            "image_info": [{"raw_url": srv.url("404/also-gone.jpg"), "matched_text_index": 0}],
        },
    ]
    mmc4 = tmp / "docs.jsonl"
    mmc4.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return tmp / "pairs.parquet", mmc4, cases


def read_out(out: Path, name: str) -> list[dict]:
    return pads.dataset(out / name, format="parquet").to_table().to_pylist()


def test_ingest_with_download_fills_or_rejects_every_pending_image(
    ray_local, server, coco_images, nxdomain, tmp_path
):
    pairs, mmc4, cases = write_inputs(tmp_path, server, coco_images)
    cfg = loopback_config(nxdomain.address, hash_col="sha256")
    recipe = Recipe(
        sources=Sources(captions=(SourceSpec(str(pairs)),), interleaved=(SourceSpec(str(mmc4)),)),
        download=cfg,
    )
    stats = run_ingest(recipe, str(tmp_path / "out"), quiet=True)

    cap = stats["streams"]["caption"]
    want = Counter(f"download/{r}" for _, r in cases if r)
    assert cap["rejected_by_reason"] == dict(want)
    assert cap["read"] == len(cases) == cap["kept"] + cap["rejected"]
    kept = read_out(tmp_path / "out", "caption")
    assert len(kept) == cap["kept"]
    assert all(
        r["image"] and r["width"] > 0 and r["image_sha256"] == hashlib.sha256(r["image"]).hexdigest()
        for r in kept
    )
    rejects = read_out(tmp_path / "out", "rejects/caption")
    assert {r["stage"] for r in rejects} == {"download"} and len(rejects) == cap["rejected"]

    docs = stats["streams"]["interleaved"]
    assert docs["read"] == 2 == docs["kept"] + docs["rejected"]
    assert docs["rejected_by_reason"] == {"download/empty_document": 1}
    assert docs["item_rejects_by_reason"] == {"download/http_404": 2}
    (doc,) = read_out(tmp_path / "out", "interleaved")
    assert [it["kind"] for it in doc["items"]] == ["image", "text", "text", "image", "text"]
    assert all(it["image"] for it in doc["items"] if it["kind"] == "image")

    # each distinct URL fetched once, across the caption table and the MMC4 doc
    names = list(coco_images)
    assert server.served[f"img/{names[20]}"] == 1 and server.served[f"img/{names[0]}"] == 1
    dl = stats["download"]
    distinct = {u for u, _ in cases}
    assert dl["references"] == len(cases) + 4 and dl["urls"] == len(distinct) + 3  # 4 doc images, 3 new
    assert dl["fetched"] == dl["urls"] and dl["reused"] == 0
    assert dl["by_reason"]["ok"] == dl["ok"] == len({u for u, r in cases if r in (None, "hash_mismatch")}) + 1
    # (a hash mismatch is the record's: the URL itself was fetched fine)
    assert dl["top_hosts"][0]["host"] == "127.0.0.1"
    urls = pads.dataset(tmp_path / "out" / "download" / "urls").to_table()
    assert urls.num_rows == dl["urls"] and len(set(urls.column("k").to_pylist())) == dl["urls"]

    # a rerun resumes at URL level: with --retry-failed only the retryable failures (the timeout
    # and the refused connection) are fetched again, nothing else; the same records come out
    served = dict(server.served)
    retry = dataclasses.replace(recipe, download=dataclasses.replace(cfg, retry_failed=True))
    again = run_ingest(retry, str(tmp_path / "out"), quiet=True)
    assert again["streams"] == stats["streams"]
    dl2 = again["download"]
    assert dl2["fetched"] == 2 and dl2["reused"] == dl["urls"] - 2
    changed = {p for p in server.received if server.served[p] != served.get(p, 0)}
    assert changed == {p for p in server.received if p.startswith("slow/")}  # refused: never served
    assert server.received[f"404/{names[0]}"] == 1


def test_fetch_blocks_covers_every_row_with_bounded_tasks_in_flight(ray_local, monkeypatch):
    """Blocks are cut into tasks of at most ``rows_per_task`` rows; every row is fetched once, in
    order, one result ref per block, also when the in-flight bound makes the driver wait."""
    import ray
    import ray.data

    from mm1data.download import phase

    def _tagged(block: pa.Table) -> pa.Table:  # (nested: pickled by value for the workers)
        return block.append_column("task", pa.array([block.column("k")[0].as_py()] * block.num_rows))

    monkeypatch.setattr(phase, "FETCHES_IN_FLIGHT", 3)
    ds = ray.data.from_arrow([pa.table({"k": list(range(a, b))}) for a, b in ((0, 25), (25, 25), (25, 60))])
    merged = phase.fetch_blocks(ds, 10, ray.remote(_tagged), ())
    tables = ray.get(merged)
    assert len(merged) == 2  # the empty block gives no task
    rows = pa.concat_tables(tables)
    assert rows.column("k").to_pylist() == list(range(60))
    sizes = Counter(rows.column("task").to_pylist())
    assert max(sizes.values()) <= 10 and len(sizes) == 3 + 4  # ceil(25/10) + ceil(35/10) tasks


def test_read_parts_reads_every_folder_and_parts_of_the_flat_layout(ray_local, tmp_path):
    """Results are read one task per partition folder (the driver lists folders, not parts); parts
    directly under the results folder (the layout before folders) are read too."""
    from mm1data.download import phase

    for folder, parts in {"p2-000000": [[1, 2], [3]], "p2-000001": [[4]], "": [[5, 6]]}.items():
        (tmp_path / folder).mkdir(exist_ok=True)
        for i, ks in enumerate(parts):
            pq.write_table(pa.table({"k": ks}), tmp_path / folder / f"part-{i}.parquet")
    (tmp_path / "p2-000001" / "notes.txt").write_text("not a part")
    root = str(tmp_path)
    assert phase.part_folders(root) == [f"{root}/p2-000000", f"{root}/p2-000001", root]
    schema = pa.schema([("k", pa.int64())])
    assert sorted(r["k"] for r in phase.read_parts(root, ["k"], schema).take_all()) == [1, 2, 3, 4, 5, 6]
    assert phase.part_folders(str(tmp_path / "none")) == []
    assert phase.read_parts(str(tmp_path / "none"), ["k"], schema).count() == 0
