"""The estimators of `mm1data plan`, checked against populations whose truth is known: Wilson
intervals, Poisson bounds, the dedup estimator under repeated Bernoulli samples, and the packed
result planned from expanded example cells."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mm1data.config import BuildConfig
from mm1data.pack.phase import EXAMPLES_PER_PARTITION
from mm1data.pack.plan import plan_build
from mm1data.plan.project import (
    dedup_round,
    expand_cells,
    ideal_mix,
    most_removals,
    poisson_lower,
    poisson_upper,
    simulate,
    wilson,
    z_of,
)

Z = z_of(0.95)


def test_wilson_matches_the_textbook_and_shrinks_with_the_population():
    lo, hi = wilson(8, 10, Z)  # Wilson 1927 / Newcombe 1998: 0.490, 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo2, hi2 = wilson(8, 10, Z, fpc=0.5)
    assert lo < lo2 < 0.8 < hi2 < hi
    assert wilson(8, 10, Z, fpc=0.0) == (0.8, 0.8)


def test_poisson_bounds_match_the_chi_square_values():
    # exact 95 % two-sided limits: x=0 → [0, 3.689]; x=5 → [1.623, 11.668]; x=20 → [12.217, 30.888]
    for x, lo, hi in ((0, 0.0, 3.689), (5, 1.623, 11.668), (20, 12.217, 30.888)):
        assert poisson_lower(x, Z) == pytest.approx(lo, rel=0.03, abs=0.01)
        assert poisson_upper(x, Z) == pytest.approx(hi, rel=0.03)


def sampled_round(sizes: np.ndarray, p: float, rng: np.random.Generator) -> tuple[int, int, int]:
    """Bernoulli-sample every member of clusters of ``sizes`` (one record each); the sampled
    clusters' removed, pairs and triples."""
    m = rng.binomial(sizes, p)
    m = m[m >= 2]
    return int((m - 1).sum()), int((m * (m - 1) // 2).sum()), int((m * (m - 1) * (m - 2) // 6).sum())


@pytest.mark.parametrize(
    "k, p, bias",
    [
        (2, 0.1, (0.88, 1.12)),
        (2, 0.3, (0.88, 1.12)),
        (4, 0.3, (0.88, 1.12)),
        (8, 0.1, (0.88, 1.12)),
        (20, 0.1, (0.88, 1.12)),
        # few sampled triples: k̂ leans to 2, so the loss is over-estimated (the safe side)
        (3, 0.1, (0.9, 1.7)),
        (4, 0.1, (0.9, 1.7)),
    ],
)
def test_dedup_estimate_against_clusters_of_one_size(k, p, bias):
    rng = np.random.default_rng(k * 100 + int(p * 10))
    clusters, singles = 150, 3000
    sizes = np.full(clusters, k)
    truth = clusters * (k - 1)
    members = singles + sizes.sum()
    points, linears, covered = [], [], 0
    for _ in range(300):
        removed, pairs, triples = sampled_round(sizes, p, rng)
        est = dedup_round(removed, 0, pairs, triples, p, Z, members)
        points.append(est["point"])
        linears.append(est["linear"])
        covered += est["low"] <= truth <= est["high"]
    assert bias[0] * truth <= np.mean(points) <= bias[1] * truth
    assert np.mean(linears) < 0.9 * truth  # scaling by 1/p loses what the sample cannot pair up
    assert covered / 300 >= 0.95


def test_dedup_bounds_hold_when_cluster_sizes_are_mixed():
    """Pairs and a few large clusters break the one-size assumption: the point is then biased,
    but the bounds, which assume nothing about sizes, still hold."""
    rng = np.random.default_rng(7)
    sizes = np.r_[np.full(300, 2), np.full(5, 60)]
    truth = int((sizes - 1).sum())
    covered = 0
    for _ in range(300):
        removed, pairs, triples = sampled_round(sizes, 0.2, rng)
        est = dedup_round(removed, 0, pairs, triples, 0.2, Z, 5000 + sizes.sum())
        assert est["low"] <= est["point"] <= est["high"]
        covered += est["low"] <= truth <= est["high"]
    assert covered / 300 >= 0.93


def test_copies_inside_one_record_scale_linearly():
    # 200 docs, each with the same picture twice: the sample draws both copies with the doc
    est = dedup_round(removed=20, within=20, pairs=0, triples=0, p=0.1, z=Z, members=4000)
    assert est["point"] == pytest.approx(200)
    assert est["low"] < 200 < est["high"]


def test_a_whole_sample_is_exact_and_pairs_fit_the_members():
    assert dedup_round(7, 2, 9, 3, 1.0, Z, 100)["point"] == 7
    assert most_removals(10, 1000) == pytest.approx(10, rel=0.03)  # few pairs: all pairs
    assert most_removals(1000, 100) == pytest.approx(2 * 1000 * 100 / 2100)  # clusters of ~21
    assert most_removals(1000, 100) < 100


def test_expanded_cells_keep_the_examples_and_thinning_removes_image_slots():
    hist = {"caption": {"160": {"1": 10}}, "interleaved": {"900": {"4": 5}}}
    hbytes = {"caption": {"160": {"1": 10_000}}, "interleaved": {"900": {"4": 20_000}}}
    cells = expand_cells(hist, hbytes, {"caption": 3.0, "interleaved": 2.0}, {}, slot=146)
    assert sorted(cells) == [("caption", 160, 1, 30.0, 1000.0), ("interleaved", 900, 4, 10.0, 4000.0)]
    thin = expand_cells(hist, hbytes, {"caption": 1.0, "interleaved": 1.0}, {"interleaved": 0.25}, slot=146)
    inter = [c for c in thin if c[0] == "interleaved"]
    assert sum(c[3] for c in inter) == pytest.approx(5)
    assert sum(c[2] * c[3] for c in inter) == pytest.approx(5 * 4 * 0.75)  # a quarter of the images
    assert sum(c[1] * c[3] for c in inter) == pytest.approx(5 * (900 - 146))


def test_planning_the_sample_itself_matches_the_planner():
    rng = np.random.default_rng(0)
    n = {"caption": 300, "interleaved": 60, "text": 80}
    tokens = np.r_[rng.integers(150, 170, 300), rng.integers(400, 3000, 60), rng.integers(200, 4000, 80)]
    images = np.r_[np.ones(300, int), rng.integers(1, 6, 60), np.zeros(80, int)]
    streams = np.array(sum(([s] * k for s, k in n.items()), []), dtype=object)
    hist: dict = {}
    for s, t, i in zip(streams, tokens, images, strict=True):
        cell = hist.setdefault(s, {}).setdefault(str(t), {})
        cell[str(i)] = cell.get(str(i), 0) + 1
    hbytes = {s: {t: {i: 0 for i in by} for t, by in ts.items()} for s, ts in hist.items()}
    cfg = BuildConfig(shard_size=20)
    cells = expand_cells(hist, hbytes, dict.fromkeys(n, 1.0), {}, slot=146)
    sim = simulate(cells, cfg)
    real = plan_build(streams, tokens, images, cfg)
    assert abs(sim["sequences"] - real.sequences) <= max(1, 0.03 * real.sequences)
    assert sim["shards"] == len(real.shards)
    for g, share in real.realized.items():
        assert sim["realized"][g] == pytest.approx(share, abs=0.01)
    doubled = simulate(expand_cells(hist, hbytes, dict.fromkeys(n, 2.0), {}, slot=146), cfg)
    assert doubled["tokens"] == pytest.approx(2 * sim["tokens"], rel=0.02)
    assert doubled["sequences"] == pytest.approx(2 * sim["sequences"], rel=0.05)


def test_a_partition_larger_than_the_simulation_is_scaled():
    hist = {"caption": {"160": {"1": 100}}, "text": {"2000": {"0": 100}}}
    hbytes = {"caption": {"160": {"1": 0}}, "text": {"2000": {"0": 0}}}
    cfg = BuildConfig(mix="caption=1,text=1")
    big = simulate(expand_cells(hist, hbytes, {"caption": 10_000.0, "text": 10_000.0}, {}, 146), cfg)
    assert big["partitions"] == 2_000_000 // EXAMPLES_PER_PARTITION  # as the plan phase sizes them
    assert big["simulated_examples"] <= 20_000
    assert big["tokens_by_stream"]["caption"] == pytest.approx(100 * 160 * 10_000, rel=0.01)
    per_seq = 160 * 16  # caption pairs fill by images: 16 per sequence
    assert big["sequences"] >= 100 * 10_000 / 16 and big["tokens"] / big["sequences"] > per_seq


def test_the_ideal_mix_uses_the_scarcest_stream_whole():
    groups = {"caption": {"caption": 450.0}, "interleaved": {"interleaved": 9000.0}, "text": {"text": 50.0}}
    ideal = ideal_mix(groups, {"caption": 0.45, "interleaved": 0.45, "text": 0.1}, upsample=False)
    assert ideal == pytest.approx({"caption": 225.0, "interleaved": 225.0, "text": 50.0})
    up = ideal_mix(groups, {"caption": 0.45, "interleaved": 0.45, "text": 0.1}, upsample=True)
    assert up["interleaved"] == pytest.approx(9000.0) and math.isclose(up["text"], 2000.0)
