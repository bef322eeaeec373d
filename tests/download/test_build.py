"""`mm1data build` with a URL caption table and `download:` on: the fetched images reach the packed
shards through the same phases as local ones, the lost ones are rejected by the download stage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from mm1data.build import run_build
from mm1data.cli import main
from mm1data.config import BuildConfig, Recipe, Sources, SourceSpec
from mm1data.shards import inspect as ins
from mm1data.shards.format import Manifest
from tests.download.conftest import loopback_config, planted

SMALL = dict(seq_len=1024, image_tokens=16, max_images=8, image_size=64, shard_size=3)


def test_build_fetches_url_captions_into_the_packed_shards(
    ray_local, server, coco_images, nxdomain, tmp_path, shared_data
):
    names = list(coco_images)
    cases = planted(server, names) + [(server.url(f"img/{n}"), None) for n in names[30:42]]
    captions = [f"a photograph of a scene, number {i}, with people and things" for i in range(len(cases))]
    pq.write_table(pa.table({"url": [u for u, _ in cases], "caption": captions}), tmp_path / "urls.parquet")
    # synthetic captions keyed by image sha256 meet the pairs once their images are fetched
    sha = hashlib.sha256(coco_images[names[30]]).hexdigest()
    lines = [
        {"sha256": sha, "caption": "A model-written description.", "generator": "capgen"},
        {"sha256": "0" * 64, "caption": "Nobody has this image.", "generator": "capgen"},
    ]
    (tmp_path / "synthetic.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    recipe = Recipe(
        sources=Sources(
            captions=(SourceSpec(str(tmp_path / "urls.parquet")),),
            synthetic_captions=(SourceSpec(str(tmp_path / "synthetic.jsonl")),),
            text=(SourceSpec(str(shared_data / "c-text/olmo-c4-sample.01.json.gz"), name="c4"),),
        ),
        download=loopback_config(nxdomain.address),
        build=BuildConfig(mix="caption=70,text=30", seed=1, **SMALL),
    )
    out = tmp_path / "out"
    stats = run_build(recipe, str(out))

    cap = stats["streams"]["caption"]
    assert cap["read"] == len(cases) == cap["kept"] + cap["rejected"]
    lost = Counter(f"download/{r}" for _, r in cases if r)
    assert {k: v for k, v in cap["rejected_by_reason"].items() if k.startswith("download/")} == dict(lost)
    assert stats["download"]["urls"] == len(cases) and stats["download"]["fetched"] == len(cases)
    syn = stats["streams"]["synthetic_caption"]
    assert syn["kept"] == 1 and syn["rejected_by_reason"] == {"ingest/no_matching_image": 1}
    pairs = pq.read_table(out / "_work" / "download" / "caption").to_pylist()
    (with_syn,) = [r for r in pairs if len(r["captions"]) == 2]
    assert with_syn["image_sha256"] == sha and with_syn["captions"][1]["provenance"] == "synthetic:capgen"

    # the caption examples in the shards are rows whose image was had, each once at most
    manifest = json.loads((out / "manifest.json").read_text())
    contract = ins.Contract.from_manifest(Manifest.from_json(manifest))
    samples = [s for e in manifest["shards"] for s in ins.read_shard_bytes((out / e["path"]).read_bytes())]
    assert samples and all(ins.check_sample(s, contract) == [] for s in samples)
    rows = [
        ex["lineage"]["offset"] for s in samples for ex in s.meta["examples"] if ex["stream"] == "caption"
    ]
    assert rows and all(cases[i][1] is None for i in rows)

    # a rerun with the same recipe resumes every phase: nothing is fetched again
    before = sum(server.served.values())
    again = run_build(recipe, str(out))
    assert sum(server.served.values()) == before
    assert again["streams"] == stats["streams"]


def test_cli_download_flag_turns_fetching_on(ray_local, server, coco_images, nxdomain, tmp_path):
    url = server.url(f"img/{next(iter(coco_images))}")
    pq.write_table(pa.table({"URL": [url], "TEXT": ["a cat"]}), tmp_path / "laion.parquet")
    cfg = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(loopback_config(nxdomain.address)).items()
    }
    cfg["enabled"] = False  # the flag turns it on
    (tmp_path / "recipe.yaml").write_text(json.dumps({"download": cfg}))  # (JSON is YAML)
    laion, recipe, out = (str(tmp_path / n) for n in ("laion.parquet", "recipe.yaml", "out"))
    args = ["ingest", "--config", recipe, "--captions", laion, "--output", out]
    off = CliRunner().invoke(main, args)
    assert off.exit_code == 0, off.output
    assert server.served == {}
    on = CliRunner().invoke(main, [*args, "--download"])
    assert on.exit_code == 0, on.output
    assert server.served[url.split("/", 3)[3]] == 1
    (row,) = pq.read_table(tmp_path / "out" / "caption").to_pylist()
    assert row["image"] == next(iter(coco_images.values()))
