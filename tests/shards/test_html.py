"""``mm1data inspect shard|dataset --html``: a well-formed, self-contained page with one block per
sequence, one band per example, every image inline, and nothing from the data left unescaped."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mm1data.cli import main
from mm1data.shards.format import (
    Mix,
    Tokenizer,
    read_manifest,
    sample_key,
    shard_name,
)
from mm1data.shards.inspect import read_shard_bytes
from mm1data.shards.writer import assemble, finish_dataset, put_shard, shard_entry, tar_bytes
from mm1data.tokens.tokenizer import TextTokenizer
from tests.shards.test_format import HEADER
from tests.train.shards_helper import write_packed_dataset

EVIL = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>"
VOID = {"meta", "img", "br", "hr", "input", "link"}


class Page(HTMLParser):
    """Checks nesting and collects tags, attributes and text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def of(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and (cls is None or a.get("class") == cls)]


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    p.close()
    assert p.errors == [] and p.stack == [], (p.errors, p.stack)
    return p


def assert_self_contained_and_inert(p: Page) -> None:
    assert not p.of("script") and not p.of("link") and not p.of("iframe")
    for _, attrs in p.tags:
        assert not any(k.startswith("on") for k in attrs), attrs  # no event handlers
        for key in ("src", "href"):
            assert attrs.get(key) is None or attrs[key].startswith("data:image/jpeg;base64,"), attrs
    csp = [a for a in p.of("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]


@pytest.fixture(scope="module")
def dataset(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_packed_dataset(tmp_path_factory.mktemp("html"), shared_data, n_shards=2, seqs_per_shard=5)


def test_shard_page_shows_every_sequence_example_and_image(dataset: Path, tmp_path: Path) -> None:
    path = dataset / shard_name(0, 0)
    out = tmp_path / "shard.html"
    result = CliRunner().invoke(main, ["inspect", "shard", str(path), "--html", str(out)])
    assert result.exit_code == 0, result.output
    samples = read_shard_bytes(path.read_bytes())
    p = parse(out.read_text())
    assert_self_contained_and_inert(p)
    assert len(p.of("div", "seq")) == len(samples) == 5
    assert len(p.of("span", "ex")) == sum(len(s.meta["examples"]) for s in samples)
    images = [a["src"] for a in p.of("img")]
    assert images == [
        "data:image/jpeg;base64," + base64.b64encode(j).decode() for s in samples for j in s.jpegs
    ]
    titles = [a["title"] for a in p.of("span", "ex")]
    first = samples[0].meta["examples"][0]
    assert titles[0].startswith(f"example 1: {first['stream']} · id {first['id']} · tokens [0, ")
    assert "lineage" in titles[0] and len(p.of("span", "nl")) > 0  # loss-masked runs are shaded
    text = "".join(p.text)
    for label in ("target", "realized (all shards)", f"this shard ({shard_name(0, 0)})"):
        assert label in text
    for heading in ("images per sequence", "non-pad tokens per sequence", "tokens per example", "fill"):
        assert heading in text
    tok = TextTokenizer()
    caption = next(ex for ex in samples[0].meta["examples"] if ex["stream"] == "caption")
    a, b = caption["span"]
    words = tok.decode([t for t in samples[0].tokens[a:b].tolist() if t < 50257]).split()
    assert " ".join(words[:3]) in " ".join(text.split())  # the decoded caption is on the page


def test_dataset_page_has_a_mix_bar_per_shard_and_the_first_sequences(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataset.html"
    result = CliRunner().invoke(
        main, ["inspect", "dataset", str(dataset), "--html", str(out), "--sample", "3"]
    )
    assert result.exit_code == 0, result.output
    p = parse(out.read_text())
    assert_self_contained_and_inert(p)
    labels = [a["title"] for a in p.of("div", "lbl")]
    assert labels == ["target", "realized (all shards)", shard_name(0, 0), shard_name(0, 1)]
    assert len(p.of("div", "seq")) == 3


def test_text_ids_and_lineage_from_the_data_are_escaped(tmp_path: Path) -> None:
    """A caption, an id and a lineage that carry markup come out as text, never as tags."""
    tok = TextTokenizer()
    ids = tok.encode([f"a photo {EVIL}"])[0] + [tok.ids["eos"]]
    ex = {
        "stream": "caption",
        "id": EVIL,
        "part": 0,
        "lineage": {"source": EVIL, "offset": 0},
        "tokens": np.asarray(ids, "<i4").tobytes(),
        "loss_mask": np.asarray([0] + [1] * (len(ids) - 1), "u1").tobytes(),
        "image_starts": [],
        "images": [],
        "slot_len": 4,
    }
    tar, index = tar_bytes([(sample_key(0, 0, 0), assemble([ex], 64, tok.ids["pad"]))])
    put_shard(str(tmp_path), shard_name(0, 0), tar, index)
    row = {
        "path": shard_name(0, 0),
        "bytes": len(tar),
        "sha256": hashlib.sha256(tar).hexdigest(),
        "sequences": 1,
        "images": 0,
        "tokens": json.dumps({"caption": len(ids)}),
        "examples": json.dumps({"caption": 1}),
    }
    header = dataclasses.replace(
        HEADER,
        tokenizer=Tokenizer(**tok.manifest()),
        special_tokens=tok.ids,
        mix=Mix(target={"caption": 1.0}, unit="tokens", realized={"caption": 1.0}),
        epochs={"caption": 1.0},
    )
    finish_dataset(str(tmp_path), header, [shard_entry(row, {"caption": 1.0}, full=False)])
    assert read_manifest(str(tmp_path)).totals.sequences == 1
    out = tmp_path / "evil.html"
    result = CliRunner().invoke(
        main, ["inspect", "shard", str(tmp_path / shard_name(0, 0)), "--html", str(out)]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    p = parse(page)
    assert_self_contained_and_inert(p)
    assert "<script>" not in page and "<img src=x" not in page
    assert EVIL in "".join(p.text)  # shown as text
    assert EVIL in p.of("span", "ex")[0]["title"]  # and in the hover, as an attribute value
