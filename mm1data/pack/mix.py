"""Mixture control: parse ``--mix``, choose how much of each stream to use, and interleave them.

The unit (``tokens``: text + image-slot tokens, no padding; ``examples``; or ``sequences``) is the
weight of each item. By default the scarcest stream is used whole and the others are cut to the
exact ratio; with ``upsample`` the largest stream is used whole and the short ones repeat
(``epochs`` > 1). Which items of a stream are used, and in which order, is a seeded permutation
per stream and epoch. :func:`interleave` then merges the streams so that every prefix of the
order is within one item per stream of the target ratio, so every shard cut from it is too.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass

import numpy as np

from mm1data.errors import UsageError
from mm1data.shards.format import STREAMS as MIX_STREAMS
from mm1data.shards.format import mix_group  # noqa: F401 - re-exported: the contract owns the rule

POSITIONAL = ("caption", "interleaved", "text")
RATIO_TOLERANCE = 0.001
"""Selection is redone once, at the scale the coarsest stream really matched, when a share is
further than this from its target (0.1 point); the scarcest stream may then not be used whole."""


def parse_mix(spec: str) -> dict[str, float]:
    """``45:45:10`` (caption:interleaved:text) or ``caption=40,synthetic_caption=5,...`` → shares
    summing to 1, in :data:`MIX_STREAMS` order; zero weights are left out."""
    spec = spec.strip()
    try:
        if "=" in spec:
            pairs = [p.split("=", 1) for p in re.split(r"[,\s]+", spec) if p]
            raw = {k.strip(): float(v) for k, v in pairs}
        else:
            values = [float(v) for v in spec.split(":")]
            if len(values) != len(POSITIONAL):
                raise ValueError
            raw = dict(zip(POSITIONAL, values, strict=True))
    except ValueError as e:
        raise UsageError(
            f"--mix {spec!r}: expected caption:interleaved:text like 45:45:10, or name=weight,..."
        ) from e
    unknown = sorted(set(raw) - set(MIX_STREAMS))
    if unknown:
        raise UsageError(f"--mix: unknown stream {unknown[0]!r} (known: {', '.join(MIX_STREAMS)})")
    if any(v < 0 for v in raw.values()) or sum(raw.values()) <= 0:
        raise UsageError(f"--mix {spec!r}: weights must be >= 0 and not all 0")
    total = sum(raw.values())
    return {k: raw[k] / total for k in MIX_STREAMS if raw.get(k, 0) > 0}


@dataclass
class Selection:
    """Chosen items per mix group, in use order (an item repeats once per epoch it is used)."""

    order: dict[str, np.ndarray]
    available: dict[str, float]  # unit total per group
    used: dict[str, float]  # unit total chosen per group (with repeats)

    @property
    def epochs(self) -> dict[str, float]:
        """Times each group was used: used / available."""
        return {g: (self.used[g] / a if a else 0.0) for g, a in self.available.items()}


def _fit_prefix(perm: np.ndarray, weight: np.ndarray, budget: float) -> np.ndarray:
    """Items of ``perm`` taken in order while they fit ``budget`` (later, smaller items may still fit)."""
    cum = np.cumsum(weight[perm])
    k = int(np.searchsorted(cum, budget + 1e-9, side="right"))
    taken = list(perm[:k])
    left = budget - (cum[k - 1] if k else 0.0)
    for i in perm[k:].tolist():
        if left <= 0:
            break
        if weight[i] <= left + 1e-9:
            taken.append(i)
            left -= weight[i]
    return np.asarray(taken, dtype=np.int64)


def select(
    groups: np.ndarray,
    weight: np.ndarray,
    target: dict[str, float],
    seed: int | tuple[int, ...],
    upsample: bool = False,
) -> Selection:
    """Choose items per group to meet ``target`` shares of the total ``weight``.

    ``groups[i]`` is item i's mix group, ``weight[i]`` its size in the mix unit. Groups not in
    ``target`` are not used. ``seed`` (an int or a tuple, e.g. seed and plan partition) seeds the
    permutations with the group and the epoch. A target group with nothing available fails
    (nothing could be built).
    """
    avail = {g: float(weight[groups == g].sum()) for g in target}
    empty = [g for g, a in avail.items() if a <= 0]
    if empty:
        raise UsageError(
            f"the mix asks for {empty[0]!r} but no {empty[0]} examples are left after filtering "
            "(give that source, or leave the stream out of --mix)"
        )
    scale = (max if upsample else min)(avail[g] / w for g, w in target.items())

    def miss(used: dict[str, float]) -> float:
        total = sum(used.values())
        return max(abs(used[g] / total - w) for g, w in target.items()) if total else 1.0

    order, used = _take(groups, weight, target, seed, avail, scale)
    if miss(used) > RATIO_TOLERANCE:
        # items are whole: keep the group that fell furthest short as it is, refit the others to
        # it, and keep whichever selection is closer to the target
        short = min(target, key=lambda g: used[g] / target[g])
        if used[short] > 0:
            order2, used2 = _take(groups, weight, target, seed, avail, used[short] / target[short])
            order2[short], used2[short] = order[short], used[short]
            if miss(used2) < miss(used):
                order, used = order2, used2
    return Selection(order=order, available=avail, used=used)


def _take(groups, weight, target, seed, avail, scale):
    """Per group: whole seeded permutations while the budget ``share × scale`` allows, then the
    items of one more permutation that still fit."""
    order, used = {}, {}
    for gi, (g, w) in enumerate(target.items()):
        idx = np.flatnonzero(groups == g)
        budget = w * scale
        parts, epoch = [], 0
        while budget > 1e-9:
            key = [*seed, gi, epoch] if isinstance(seed, tuple) else [seed, gi, epoch]
            perm = idx[np.random.default_rng(key).permutation(len(idx))]
            whole = avail[g] <= budget + 1e-9
            take = perm if whole else _fit_prefix(perm, weight, budget)
            if len(take):
                parts.append(take)
            budget -= float(weight[take].sum())
            epoch += 1
            if not whole:
                break  # a partial epoch is the last
        order[g] = np.concatenate(parts) if parts else np.empty(0, np.int64)
        used[g] = float(weight[order[g]].sum())
    return order, used


def interleave(order: dict[str, np.ndarray], weight: np.ndarray, target: dict[str, float]) -> np.ndarray:
    """Merge the groups' item orders into one: next comes the group furthest behind its share
    (smallest used / share, ties in ``target`` order). Every prefix is within one item per group
    of the target ratio."""
    heads = {g: 0 for g in order}
    heap = [(0.0, i, g) for i, g in enumerate(target) if len(order[g])]
    heapq.heapify(heap)
    out = []
    while heap:
        used, i, g = heapq.heappop(heap)
        item = int(order[g][heads[g]])
        out.append(item)
        heads[g] += 1
        if heads[g] < len(order[g]):
            heapq.heappush(heap, (used + float(weight[item]) / target[g], i, g))
    return np.asarray(out, dtype=np.int64)


def realized(groups: np.ndarray, weight: np.ndarray, items: np.ndarray, names: list[str]) -> dict[str, float]:
    """Share of each group in ``items`` (weights summed; repeats count)."""
    w = weight[items]
    total = float(w.sum())
    return {g: (float(w[groups[items] == g].sum()) / total if total else 0.0) for g in names}
