"""Union-find and the survivor rule."""

from __future__ import annotations

from mm1data.dedup.components import resolve, survivor_key


def test_survivor_is_best_quality_then_caption_stream_then_smallest_id():
    pairs = [("text:b", "text:a", 0.9), ("text:a", "interleaved:z", 0.8), ("caption:q", "caption:p", 1.0)]
    removed = resolve(pairs, {"text:b": 0.5})
    assert "text:b" not in removed  # the only one with a quality score
    assert removed["text:a"] == ("text:b", 0.9)
    assert removed["interleaved:z"] == ("text:b", 0.8)
    assert removed["caption:q"] == ("caption:p", 1.0)  # no scores: smallest id


def test_caption_pair_beats_interleaved_doc_at_equal_quality():
    assert survivor_key("caption:x", None) < survivor_key("interleaved:a#1", None)
    assert survivor_key("interleaved:a", 0.1) < survivor_key("caption:x", None)


def test_components_are_transitive_and_order_independent():
    pairs = [("text:1", "text:2", 0.9), ("text:3", "text:2", 0.8), ("text:4", "text:5", 0.95)]
    a = resolve(pairs, {})
    b = resolve(list(reversed(pairs)), {})
    assert a == b
    assert a == {"text:2": ("text:1", 0.9), "text:3": ("text:1", 0.8), "text:5": ("text:4", 0.95)}


def test_image_of_a_removed_doc_never_wins_an_image_cluster():
    from mm1data.dedup.phases import DedupRun, resolve_all

    # doc X is a text duplicate of T (which scores higher); X's image #1 has the bytes of caption C
    q = {"text:T": 0.95, "interleaved:X": 0.9, "interleaved:X#1": 0.9, "caption:C": 0.5}
    pairs = [
        {"kind": k, "a": d, "b": m, "sim": 1.0, "qa": q[m], "qb": q[m]}
        for k, d, m in [
            (1, "d1", "text:T"),
            (1, "d1", "interleaved:X"),
            (2, "d2", "interleaved:X#1"),
            (2, "d2", "caption:C"),
        ]
    ]
    run = DedupRun()
    resolve_all(run, pairs, [])
    assert run.removals == {"interleaved:X": ("exact_duplicate", "text:T", 1.0)}  # the picture stays via C
