"""Mixture control on synthetic example sizes (pure, no Ray): parsing, selection, interleaving."""

from __future__ import annotations

import numpy as np
import pytest

from mm1data.errors import UsageError
from mm1data.pack.mix import interleave, mix_group, parse_mix, realized, select


def test_parse_mix_accepts_ratios_and_named_weights() -> None:
    assert parse_mix("45:45:10") == pytest.approx({"caption": 0.45, "interleaved": 0.45, "text": 0.10})
    named = parse_mix("caption=40,synthetic_caption=5,interleaved=45,text=10")
    assert named == pytest.approx(
        {"caption": 0.4, "synthetic_caption": 0.05, "interleaved": 0.45, "text": 0.1}
    )
    assert parse_mix("1:0:1") == pytest.approx({"caption": 0.5, "text": 0.5})


@pytest.mark.parametrize("spec", ["45:45", "a:b:c", "caption=1,images=2", "0:0:0", "-1:1:1"])
def test_a_bad_mix_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError, match="mix"):
        parse_mix(spec)


def test_synthetic_captions_count_as_captions_unless_named() -> None:
    assert mix_group("synthetic_caption", parse_mix("45:45:10")) == "caption"
    assert (
        mix_group("synthetic_caption", parse_mix("caption=40,synthetic_caption=5,text=55"))
        == "synthetic_caption"
    )


def streams_of(n_cap: int, n_inter: int, n_text: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = np.array(["caption"] * n_cap + ["interleaved"] * n_inter + ["text"] * n_text, dtype=object)
    tokens = np.concatenate(
        [rng.integers(150, 220, n_cap), rng.integers(300, 4096, n_inter), rng.integers(50, 4096, n_text)]
    ).astype(float)
    return groups, tokens


def test_by_default_the_scarcest_stream_is_used_whole_and_the_others_cut_to_the_ratio() -> None:
    groups, tokens = streams_of(4000, 2000, 2000)
    target = parse_mix("45:45:10")
    sel = select(groups, tokens, target, seed=1)
    shares = {g: sel.used[g] / sum(sel.used.values()) for g in target}
    assert sel.epochs["caption"] == pytest.approx(1.0)  # captions are scarcest here
    assert all(abs(shares[g] - target[g]) < 0.01 for g in target)
    assert all(e <= 1.0 for e in sel.epochs.values())
    assert all(len(set(sel.order[g].tolist())) == len(sel.order[g]) for g in target)  # no repeats


def test_upsample_repeats_the_short_streams_and_reports_epochs_above_one() -> None:
    groups, tokens = streams_of(500, 2000, 2000)
    target = parse_mix("45:45:10")
    sel = select(groups, tokens, target, seed=1, upsample=True)
    shares = {g: sel.used[g] / sum(sel.used.values()) for g in target}
    assert sel.epochs["caption"] > 2.0 and max(sel.epochs.values()) == pytest.approx(sel.epochs["caption"])
    assert all(abs(shares[g] - target[g]) < 0.01 for g in target)


def test_selection_is_deterministic_from_the_seed() -> None:
    groups, tokens = streams_of(1000, 500, 500)
    target = parse_mix("45:45:10")
    a, b, c = (select(groups, tokens, target, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(a.order[g], b.order[g]) for g in target)
    assert any(not np.array_equal(a.order[g], c.order[g]) for g in target)


def test_a_mix_stream_with_no_examples_is_a_usage_error() -> None:
    groups, tokens = streams_of(100, 0, 100)
    with pytest.raises(UsageError, match="interleaved"):
        select(groups, tokens, parse_mix("45:45:10"), seed=0)


def test_every_window_of_the_interleaved_order_stays_near_the_target() -> None:
    groups, tokens = streams_of(6000, 1500, 1500, seed=2)
    target = parse_mix("45:45:10")
    sel = select(groups, tokens, target, seed=3)
    order = interleave(sel.order, tokens, target)
    assert sorted(order.tolist()) == sorted(np.concatenate(list(sel.order.values())).tolist())
    window = int(len(order) / 8)  # ~ a shard: each contiguous cut must meet the mix within 1 point
    for start in range(0, len(order) - window, window // 3):
        shares = realized(groups, tokens, order[start : start + window], list(target))
        assert all(abs(shares[g] - target[g]) <= 0.01 for g in target), shares
