"""Pack examples into sequences with two budgets: tokens ≤ ``seq_len`` and images ≤ ``max_images``.

Pure functions over per-example ``tokens`` and ``images`` counts; a packing is a list of bins,
each a list of example indices. :func:`pack` is the packer ``mm1data build`` uses: the best of
best-fit decreasing (best on one-budget data such as text), worst fit into pre-opened bins (best on
mixed data: best fit packs big items tightly first, so the image-dense captions end in
caption-only bins capped at ``max_images``) and best fit in the mixer's arrival order;
:func:`first_fit` (arrival order, no sorting) and :func:`one_per_sequence` are the baselines the
benchmark compares it with. :func:`attainable_fill` is the bound the two budgets allow on the data.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort

import numpy as np


class Bins:
    """Open bins indexed by remaining tokens: one sorted list for all bins, one for bins that can
    still take an image. Best fit = the bin with the least room that still fits."""

    def __init__(self, seq_len: int, max_images: int) -> None:
        self.seq_len, self.max_images = seq_len, max_images
        self.room: list[int] = []  # remaining tokens per bin
        self.img_room: list[int] = []  # remaining images per bin
        self.members: list[list[int]] = []
        self.any: list[tuple[int, int]] = []  # (room, bin) of bins with room > 0
        self.img: list[tuple[int, int]] = []  # (room, bin) of bins with room > 0 and img_room > 0

    def _index(self, b: int) -> None:
        if self.room[b] > 0:
            insort(self.any, (self.room[b], b))
            if self.img_room[b] > 0:
                insort(self.img, (self.room[b], b))

    def _unindex(self, b: int) -> None:
        key = (self.room[b], b)
        i = bisect_left(self.any, key)
        if i < len(self.any) and self.any[i] == key:
            del self.any[i]
        i = bisect_left(self.img, key)
        if i < len(self.img) and self.img[i] == key:
            del self.img[i]

    def best(self, tokens: int, images: int) -> int | None:
        """The open bin with the least token room that fits ``tokens`` and ``images``, or None."""
        pool = self.img if images else self.any
        i = bisect_left(pool, (tokens, -1))
        while i < len(pool):
            b = pool[i][1]
            if self.img_room[b] >= images:
                return b
            i += 1
        return None

    def add(self, b: int | None, item: int, tokens: int, images: int) -> int:
        """Put ``item`` in bin ``b`` (a new bin when None); returns the bin."""
        if b is None:
            b = len(self.members)
            self.room.append(self.seq_len)
            self.img_room.append(self.max_images)
            self.members.append([])
        else:
            self._unindex(b)
        self.room[b] -= tokens
        self.img_room[b] -= images
        self.members[b].append(item)
        self._index(b)
        return b


def _check(tokens: np.ndarray, images: np.ndarray, seq_len: int, max_images: int) -> None:
    if len(tokens) and (tokens.max() > seq_len or images.max() > max_images):
        raise ValueError("an example exceeds seq_len tokens or max_images images")


def best_fit_decreasing(
    tokens: np.ndarray, images: np.ndarray, seq_len: int, max_images: int, window: int = 0
) -> list[list[int]]:
    """Best-fit decreasing with two budgets, over windows of ``window`` items (0: all at once).

    Within a window items go largest first by ``tokens/seq_len + images/max_images`` (ties by
    index); each goes into the open bin with the least token room that fits both budgets. Bins
    stay open across windows. Deterministic; each bin lists its items in index order."""
    tokens = np.asarray(tokens, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    _check(tokens, images, seq_len, max_images)
    n = len(tokens)
    size = tokens / seq_len + images / max_images
    bins = Bins(seq_len, max_images)
    step = window if window > 0 else max(n, 1)
    for lo in range(0, n, step):
        idx = np.arange(lo, min(n, lo + step))
        order = idx[np.lexsort((idx, -size[idx]))]
        for i in order.tolist():
            t, k = int(tokens[i]), int(images[i])
            bins.add(bins.best(t, k), i, t, k)
    return [sorted(m) for m in bins.members]


BALANCED_RUN = 8


def pack(
    tokens: np.ndarray, images: np.ndarray, seq_len: int, max_images: int, window: int = 0
) -> list[list[int]]:
    """The packing with the fewest sequences among :func:`best_fit_decreasing` over ``window``,
    best fit in arrival order with decreasing runs of :data:`BALANCED_RUN`, and
    :func:`worst_fit_fixed` (ties: the first). Stops early at the lower bound. Deterministic."""
    floor = min_sequences(int(np.sum(tokens)), int(np.sum(images)), seq_len, max_images)
    best = None
    for candidate in (
        lambda: best_fit_decreasing(tokens, images, seq_len, max_images, window),
        lambda: worst_fit_fixed(tokens, images, seq_len, max_images),
        lambda: best_fit_decreasing(tokens, images, seq_len, max_images, BALANCED_RUN),
    ):
        bins = candidate()
        if best is None or len(bins) < len(best):
            best = bins
        if len(best) <= floor:
            break
    return best


def first_fit(tokens: np.ndarray, images: np.ndarray, seq_len: int, max_images: int) -> list[list[int]]:
    """Naive first-fit: items in arrival order, each into the oldest open bin that fits."""
    tokens = np.asarray(tokens, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    _check(tokens, images, seq_len, max_images)
    tree = _MaxTree(len(tokens))
    room: list[int] = []
    img_room: list[int] = []
    members: list[list[int]] = []
    for i, (t, k) in enumerate(zip(tokens.tolist(), images.tolist(), strict=True)):
        b = tree.leftmost(t, lambda j, k=k: img_room[j] >= k)
        if b is None:
            b = len(members)
            room.append(seq_len)
            img_room.append(max_images)
            members.append([])
        room[b] -= t
        img_room[b] -= k
        members[b].append(i)
        tree.set(b, room[b] if img_room[b] > 0 else -room[b] - 1 if room[b] > 0 else -1)
    return members


class _MaxTree:
    """Segment tree over bins: value = token room (encoded negative when the bin has no image
    room), to find the leftmost bin with room ≥ t in O(log n)."""

    def __init__(self, n: int) -> None:
        self.size = 1
        while self.size < max(n, 1):
            self.size *= 2
        self.t = [-(10**18)] * (2 * self.size)  # max of |room| over the subtree (any bin)
        self.v = [-(10**18)] * self.size

    def set(self, i: int, value: int) -> None:
        self.v[i] = value
        room = value if value >= 0 else -value - 1
        j = i + self.size
        self.t[j] = room
        j //= 2
        while j:
            self.t[j] = max(self.t[2 * j], self.t[2 * j + 1])
            j //= 2

    def leftmost(self, need: int, ok) -> int | None:
        """Leftmost bin with room ≥ ``need`` for which ``ok(bin)`` holds."""
        return self._find(1, need, ok)

    def _find(self, node: int, need: int, ok) -> int | None:
        if self.t[node] < need:
            return None
        if node >= self.size:
            i = node - self.size
            return i if ok(i) else None
        left = self._find(2 * node, need, ok)
        return left if left is not None else self._find(2 * node + 1, need, ok)


def one_per_sequence(
    tokens: np.ndarray, images: np.ndarray, seq_len: int, max_images: int
) -> list[list[int]]:
    """No packing: every example alone in its own padded sequence."""
    _check(np.asarray(tokens), np.asarray(images), seq_len, max_images)
    return [[i] for i in range(len(tokens))]


def fill(tokens: np.ndarray, bins: list[list[int]], seq_len: int) -> float:
    """Non-pad tokens / all tokens of the sequences."""
    return float(np.sum(tokens)) / (len(bins) * seq_len) if bins else 0.0


def min_sequences(total_tokens: int, total_images: int, seq_len: int, max_images: int) -> int:
    """The fewest sequences any packing can use: both budgets must hold in total."""
    return max(math.ceil(total_tokens / seq_len), math.ceil(total_images / max_images), 0)


def attainable_fill(tokens: np.ndarray, images: np.ndarray, seq_len: int, max_images: int) -> float:
    """The highest fill the budgets allow on these examples: tokens / (seq_len × min_sequences).

    Caption pairs alone at 16 images per sequence cannot fill 4096 tokens: the image cap, not the
    token budget, then decides how many sequences are needed."""
    t, k = int(np.sum(tokens)), int(np.sum(images))
    n = min_sequences(t, k, seq_len, max_images)
    return t / (n * seq_len) if n else 0.0


def check_packing(
    bins: list[list[int]], tokens: np.ndarray, images: np.ndarray, seq_len: int, max_images: int
) -> None:
    """Raise ``AssertionError`` unless every item is in exactly one bin and every bin fits both budgets."""
    seen = sorted(i for b in bins for i in b)
    assert seen == list(range(len(tokens))), "items lost or duplicated"
    for b in bins:
        assert b, "empty bin"
        assert sum(int(tokens[i]) for i in b) <= seq_len, "token budget exceeded"
        assert sum(int(images[i]) for i in b) <= max_images, "image budget exceeded"


def worst_fit_fixed(tokens: np.ndarray, images: np.ndarray, seq_len: int, max_images: int) -> list[list[int]]:
    """Open the fewest sequences the budgets allow up front, then place items largest first (by
    ``max(tokens/seq_len, images/max_images)``) into the fitting bin with the most room (tokens, plus
    image room for items with images); a new bin only when none fits. Spreading keeps room for the
    image-dense captions that best fit would leave to caption-only bins."""
    tokens = np.asarray(tokens, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    _check(tokens, images, seq_len, max_images)
    n = len(tokens)
    opened = min_sequences(int(tokens.sum()), int(images.sum()), seq_len, max_images)
    cap = n + opened + 1
    room = np.full(cap, seq_len, np.int64)
    img_room = np.full(cap, max_images, np.int64)
    members: list[list[int]] = [[] for _ in range(opened)]
    size = np.maximum(tokens / seq_len, images / max_images)
    for i in np.lexsort((np.arange(n), -size)).tolist():
        t, k = int(tokens[i]), int(images[i])
        nb = len(members)
        r, ir = room[:nb], img_room[:nb]
        ok = (r >= t) & (ir >= k)
        if ok.any():
            score = np.where(ok, r / seq_len + (ir / max_images if k else 0.0), -np.inf)
            b = int(np.argmax(score))
        else:
            b = nb
            members.append([])
        room[b] -= t
        img_room[b] -= k
        members[b].append(i)
    return [sorted(m) for m in members if m]
