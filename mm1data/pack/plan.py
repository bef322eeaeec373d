"""The build plan, made on the driver from example metadata only (stream, tokens, images, bytes).

:func:`plan_build` selects and interleaves examples to the target mix (:mod:`mm1data.pack.mix`),
cuts the order into shards of at most ``shard_size`` sequences and packs each shard
(:func:`mm1data.pack.packer.pack`), or with ``mix_unit: sequences`` packs each stream first and
mixes whole sequences. The plan says, for every shard, which examples go in which sequence in
which order; workers then write the shards from it. Same metadata + config → same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mm1data.config import BuildConfig
from mm1data.pack.mix import interleave, mix_group, parse_mix, realized, select
from mm1data.pack.packer import BALANCED_RUN, attainable_fill, best_fit_decreasing, min_sequences, pack

TAR_MEMBER_OVERHEAD = 1024  # header + average padding of one tar member
EXAMPLE_JSON_BYTES = 200


@dataclass
class Plan:
    """Shards → sequences → example indices (an index repeats once per epoch it is used)."""

    shards: list[list[list[int]]]
    target: dict[str, float]
    unit: str
    realized: dict[str, float]
    realized_per_shard: list[dict[str, float]]
    epochs: dict[str, float]
    copies: np.ndarray  # times each example is used (0: left out by the mix)
    fill: float
    bound: float

    @property
    def sequences(self) -> int:
        """Sequences in all shards."""
        return sum(len(s) for s in self.shards)


def sequence_bytes(seq_len: int) -> int:
    """Estimated bytes of one sequence's arrays and members, images and example json aside."""
    return seq_len * 13 + 512 + 6 * TAR_MEMBER_OVERHEAD


def plan_build(
    streams: np.ndarray,
    tokens: np.ndarray,
    images: np.ndarray,
    cfg: BuildConfig,
    image_bytes: np.ndarray | None = None,
    partition: int | None = None,
) -> Plan:
    """Plan a build over examples described by their ``streams``, ``tokens`` and ``images`` counts
    (and JPEG ``image_bytes``, used only with ``shard_bytes``). ``partition`` (a plan partition)
    joins the seed of the selection, so partitions draw independent permutations."""
    seed = cfg.seed if partition is None else (cfg.seed, partition)
    streams = np.asarray(streams, dtype=object)
    tokens = np.asarray(tokens, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    nbytes = np.zeros(len(tokens), np.int64) if image_bytes is None else np.asarray(image_bytes, np.int64)
    target = parse_mix(cfg.mix)
    groups = np.array([mix_group(s, target) for s in streams], dtype=object)
    names = list(target)
    L, M = cfg.seq_len, cfg.max_images
    per_stream = cfg.pack_mode == "per-stream" or cfg.mix_unit == "sequences"

    def pack_chunk(idx: np.ndarray, fast: bool = False) -> list[list[int]]:
        """Bins of positions 0..len(idx)-1 of the examples ``idx`` (per stream when asked).
        ``fast``: the better of :func:`pack`'s two quick candidates (so the final
        packing never needs more sequences than the fast one found)."""
        if fast and not per_stream:
            a = best_fit_decreasing(tokens[idx], images[idx], L, M, cfg.pack_window)
            b = best_fit_decreasing(tokens[idx], images[idx], L, M, BALANCED_RUN)
            return a if len(a) <= len(b) else b
        if not per_stream:
            return pack(tokens[idx], images[idx], L, M, cfg.pack_window)
        bins: list[list[int]] = []
        for g in names:
            pos = np.flatnonzero(groups[idx] == g)
            if len(pos):
                bins += [
                    [int(pos[j]) for j in b]
                    for b in pack(tokens[idx[pos]], images[idx[pos]], L, M, cfg.pack_window)
                ]
        return bins

    if cfg.mix_unit == "sequences":
        seqs, seq_group = [], []
        for g in names:
            idx = np.flatnonzero(groups == g)
            for b in pack(tokens[idx], images[idx], L, M, cfg.pack_window):
                seqs.append([int(idx[j]) for j in b])
                seq_group.append(g)
        seq_group_arr = np.array(seq_group, dtype=object)
        ones = np.ones(len(seqs))
        sel = select(seq_group_arr, ones, target, seed, cfg.upsample)
        order = interleave(sel.order, ones, target)
        shard_seqs = [order[i : i + cfg.shard_size] for i in range(0, len(order), cfg.shard_size)]
        shards = [[seqs[j] for j in chunk] for chunk in shard_seqs]
        per_shard = [realized(seq_group_arr, ones, chunk, names) for chunk in shard_seqs]
        overall = realized(seq_group_arr, ones, order, names)
    else:
        weight = tokens.astype(float) if cfg.mix_unit == "tokens" else np.ones(len(tokens))
        sel = select(groups, weight, target, seed, cfg.upsample)
        order = interleave(sel.order, weight, target)
        shards, per_shard = [], []
        for chunk, bins in _shard_chunks(order, tokens, images, nbytes, cfg, pack_chunk):
            shards.append(bins)
            per_shard.append(realized(groups, weight, chunk, names))
        overall = realized(groups, weight, order, names)

    placed = np.array([i for s in shards for q in s for i in q], dtype=np.int64)
    copies = np.bincount(placed, minlength=len(tokens)) if len(placed) else np.zeros(len(tokens), np.int64)
    unit_w = tokens.astype(float) if cfg.mix_unit == "tokens" else np.ones(len(tokens))
    epochs = {}
    for s in sorted(set(streams.tolist())):
        mine = streams == s
        avail = float(unit_w[mine].sum())
        epochs[s] = round(float((unit_w * copies)[mine].sum()) / avail, 6) if avail else 0.0
    n_seq = sum(len(s) for s in shards)
    fill = float(tokens[placed].sum()) / (n_seq * L) if n_seq else 0.0
    if per_stream:
        need = sum(
            min_sequences(
                int(tokens[placed][groups[placed] == g].sum()),
                int(images[placed][groups[placed] == g].sum()),
                L,
                M,
            )
            for g in names
        )
        bound = float(tokens[placed].sum()) / (need * L) if need else 0.0
    else:
        bound = attainable_fill(tokens[placed], images[placed], L, M)
    return Plan(
        shards=shards,
        target=target,
        unit=cfg.mix_unit,
        realized=overall,
        realized_per_shard=per_shard,
        epochs=epochs,
        copies=copies,
        fill=fill,
        bound=bound,
    )


def _shard_chunks(order, tokens, images, nbytes, cfg: BuildConfig, pack_chunk):
    """Cut ``order`` into consecutive chunks that each pack into at most ``shard_size`` sequences
    (and ``shard_bytes``); yields (chunk of example indices, bins of example indices in order)."""
    L, M, S = cfg.seq_len, cfg.max_images, cfg.shard_size
    ct = np.cumsum(tokens[order])
    ci = np.cumsum(images[order])
    cb = np.cumsum(nbytes[order] + images[order] * TAR_MEMBER_OVERHEAD + EXAMPLE_JSON_BYTES)
    pos, n_total = 0, len(order)

    def upto(pos: int, cap: np.ndarray, limit: float) -> int:
        base = cap[pos - 1] if pos else 0
        return int(np.searchsorted(cap, base + limit, side="right")) - pos

    def fits(bins: list[list[int]], pos: int, n: int) -> bool:
        if len(bins) > S:
            return False
        if cfg.shard_bytes is None:
            return True
        body = cb[pos + n - 1] - (cb[pos - 1] if pos else 0)
        return body + len(bins) * sequence_bytes(L) <= cfg.shard_bytes

    while pos < n_total:
        left = n_total - pos
        guess = min(upto(pos, ct, S * L * 0.995), upto(pos, ci, S * M * 0.995))
        if cfg.shard_bytes is not None:
            guess = min(guess, upto(pos, cb, cfg.shard_bytes - S * sequence_bytes(L)))
        n = max(1, min(left, guess if guess < left else left))
        lo, lo_bins, hi = 0, None, left + 1
        for _ in range(12):
            idx = order[pos : pos + n]
            bins = pack_chunk(idx, fast=True)
            if fits(bins, pos, n):
                lo, lo_bins = n, bins
                if n == left or hi - lo <= 1:
                    break
                per_bin = n / max(1, len(bins))
                step = max(1, math.floor((S - len(bins)) * per_bin * 0.9))
                n = min(hi - 1, n + step, left)
            else:
                hi = n
                if hi - lo <= 1:
                    break
                per_bin = n / max(1, len(bins))
                step = max(1, math.ceil((len(bins) - S) * per_bin * 1.1))
                n = max(lo + 1, min(hi - 1, n - step))
        if lo_bins is None:  # a single example always fits one sequence
            lo, lo_bins = 1, pack_chunk(order[pos : pos + 1])
        idx = order[pos : pos + lo]
        final = pack_chunk(idx)
        bins = sorted(
            (sorted(b) for b in (final if len(final) <= len(lo_bins) else lo_bins)), key=lambda b: b[0]
        )
        yield idx, [[int(idx[j]) for j in b] for b in bins]
        pos += lo
