"""Connected components, the survivor rule, and large-star / small-star against one-task CC."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mm1data.config import DedupConfig
from mm1data.dedup.components import EDGE, local_components, rank, survivor_key, undirected
from mm1data.dedup.phases import components, find_duplicates
from mm1data.runners.shuffle import LocalTables
from tests.dedup.conftest import caption_table, interleaved_table, text_table


def test_rank_orders_members_as_the_survivor_rule():
    members = [
        ("text:b", 0.5),
        ("text:a", None),
        ("interleaved:z", None),
        ("caption:q", None),
        ("caption:p", None),
        ("caption:x", 0.9),
        ("text:c", -0.25),
        ("interleaved:a#1", 0.9),
    ]
    by_key = sorted(members, key=lambda m: survivor_key(*m))
    by_rank = sorted(members, key=lambda m: rank(*m))
    assert by_rank == by_key
    assert by_key[0] == ("caption:x", 0.9) and by_key[-1] == ("text:a", None)


def test_caption_pair_beats_interleaved_doc_at_equal_quality():
    assert rank("caption:x", None) < rank("interleaved:a#1", None)
    assert rank("interleaved:a", 0.1) < rank("caption:x", None)


def _labels(table: pa.Table) -> dict[int, int]:
    return dict(zip(table.column("member").to_pylist(), table.column("comp").to_pylist(), strict=True))


def test_local_components_are_transitive_and_order_independent():
    a, b = np.array([1, 3, 4, 9]), np.array([2, 2, 5, 9])
    labels = _labels(local_components(undirected(a, b)))
    assert labels == {1: 1, 2: 1, 3: 1, 4: 4, 5: 4}  # the self-loop 9-9 is no edge
    assert _labels(local_components(undirected(b[::-1], a[::-1]))) == labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_star_small_star_rounds_equal_one_task_components(seed, monkeypatch):
    """Random graphs with long chains and stars, over 7 partitions: the distributed rounds find the
    same components as scipy in one task."""
    from mm1data.dedup import phases

    rng = np.random.default_rng(seed)
    ids = rng.integers(-(2**62), 2**62, 400)
    chain = [(ids[i], ids[i + 1]) for i in range(0, 120)]  # one long path
    star = [(ids[150], ids[j]) for j in range(151, 200)]
    rand = [tuple(rng.choice(ids[200:], 2)) for _ in range(150)]
    a, b = np.array([e[0] for e in chain + star + rand]), np.array([e[1] for e in chain + star + rand])
    edges = undirected(a, b)
    monkeypatch.setattr(phases, "LOCAL_EDGES", 0)
    monkeypatch.setattr(phases, "ROWS_PER_PARTITION", 60)
    distributed = components(LocalTables(partitioned=True), edges, edges.num_rows)
    assert _labels(distributed) == _labels(local_components(edges))
    assert len(set(_labels(distributed).values())) < 60


def test_empty_edges_have_no_components():
    assert local_components(EDGE.empty_table()).num_rows == 0


def test_image_of_a_removed_doc_never_wins_an_image_cluster(coco_images, dolma_docs):
    """Doc X is an exact text copy of text doc T (which scores higher); X's image has the bytes of
    caption pair C. X goes as a text duplicate, and C keeps the picture (X's image is not in play)."""
    text = next(t for _, t in dolma_docs if len(t.split()) > 200)
    (name, image), tables = coco_images[0], {}
    tables["text"] = text_table([("T", text)], quality=[0.95])
    tables["interleaved"] = interleaved_table([("X", text, [image])])
    tables["caption"] = caption_table([(name, image)])
    removals = find_duplicates(tables, DedupConfig())
    assert removals == {"interleaved:X": ("exact_duplicate", "text:T", 1.0)}
