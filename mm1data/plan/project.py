"""From a sample's counts to the full build: kept records, dedup loss, packed result, budget, cost.

Pure functions over the small counts ``mm1data plan`` measured (``stats.json`` of the sample run
and the measure phase's facts, see :mod:`mm1data.plan.measure`). Every projected number comes
with a ``_low`` / ``_high`` interval at the plan's confidence:

- **records**: plan reads every record (ingest is cheap next to what follows and its counts are
  then exact: read, ingest rejects, live); the sample is a Bernoulli sample of the live records,
  so each stream's kept fraction (through filter and decontamination) is a binomial proportion,
  given with a **Wilson score interval** with the finite-population correction (1 − f);
- **tokens** (in the mix unit) per stream: live records × the mean per sampled record, with a
  normal interval from the per-record variance (again with 1 − f), and the dedup bounds below
  added in quadrature;
- **dedup**: a sample of fraction p keeps a duplicate pair with probability p², so removals do
  not scale by 1/p. Per dedup round (text kinds; image kinds), each sampled cluster (a survivor
  and the members removed as its duplicates) spans r distinct records: pairs P = Σ C(r, 2) and
  triples T = Σ C(r, 3) estimate the full corpus's P/p² and T/p³ (unbiased factorial moments).
  Assuming the round's clusters span about one number k of records, k̂ = 2 + 3T / (pP), at
  least 1 + 2(P/p²)/members (the pairs must fit in the round's members), and the removals across
  records are (P/p²)·2/k̂; copies inside one record (m − r per cluster) are drawn with it and
  scale by 1/p. Bounds that need no assumption on cluster sizes: the lower Poisson bound of the
  sampled removals / p (removed/p is low in expectation), and the most removals the upper
  Poisson bound of the pairs can mean among the members (:func:`most_removals`);
- **packed result**: the sample's examples (a histogram of tokens × images per stream), expanded
  to each stream's projected full size and thinned by the extra image dedup, are planned with the
  build's own planner (:func:`mm1data.pack.plan.plan_build`: mix selection, interleaving, shard
  cuts, packing) for one plan partition of the full build (capped at :data:`SIM_EXAMPLES`, then
  scaled) × the partitions; the interval plans the low and the high availability of every
  stream, and takes in the mix rule's ideal split (:func:`ideal_mix`);
- **cost**: the workers' CPU seconds per phase per record in, measured on the sample, times the
  full corpus's records in, plus the driver's as measured; wall time on N nodes of C cores
  assumes perfect parallelism within each phase (the plan phase: one task per plan partition).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from mm1data.config import BuildConfig, PlanConfig
from mm1data.errors import UsageError
from mm1data.ingest.sample import NOT_SAMPLED
from mm1data.pack.mix import mix_group, parse_mix
from mm1data.pack.phase import EXAMPLES_PER_PARTITION
from mm1data.pack.plan import EXAMPLE_JSON_BYTES, TAR_MEMBER_OVERHEAD, plan_build, sequence_bytes
from mm1data.plan.measure import ROUND_OF_RECORD, record_stream
from mm1data.runners.shuffle import partitions_for
from mm1data.schemas import STREAMS

SIM_EXAMPLES = 20_000
"""Examples of the simulated plan partition at most (a larger partition is simulated at this size
and scaled: packing quality no longer changes at this size)."""
PHASES = ("ingest", "filter", "dedup", "tokenize", "plan")
FEW_PAIRS = 10
"""Below this many sampled duplicate pairs a round's estimate is flagged as rough."""


def z_of(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence``."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: float, n: float, z: float, fpc: float = 1.0) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n; ``fpc`` = 1 − sampling fraction shrinks it
    (0: the whole population was seen, the interval is the point)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    if fpc <= 0:
        return p, p
    ne = n / fpc
    denom = 1 + z * z / ne
    center = (p + z * z / (2 * ne)) / denom
    half = z * math.sqrt(p * (1 - p) / ne + z * z / (4 * ne * ne)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def poisson_upper(x: float, z: float) -> float:
    """Upper confidence bound of a Poisson mean after observing ``x`` (Wilson–Hilferty)."""
    a = x + 1
    return a * (1 - 1 / (9 * a) + z / (3 * math.sqrt(a))) ** 3


def poisson_lower(x: float, z: float) -> float:
    """Lower confidence bound of a Poisson mean after observing ``x`` (Wilson–Hilferty)."""
    if x <= 0:
        return 0.0
    return max(0.0, x * (1 - 1 / (9 * x) - z / (3 * math.sqrt(x))) ** 3)


def most_removals(pairs: float, members: float) -> float:
    """The most removals ``pairs`` duplicate pairs can mean among ``members``: clusters as small as
    the members allow (all of one size k, with C·k = members and C·C(k, 2) = pairs), since a
    removal costs more pairs in a larger cluster."""
    if pairs <= 0:
        return 0.0
    if members <= 0:
        return pairs
    return min(pairs, 2 * pairs * members / (members + 2 * pairs))


def dedup_round(
    removed: int, within: int, pairs: int, triples: int, p: float, z: float, members: float
) -> dict:
    """Full-corpus removals of one dedup round from its sampled clusters (module docstring):
    copies inside one record scale by 1/p; duplicates across records by the cluster moments,
    with k̂ at least what the round's ``members`` (at full size) force on the pairs."""
    if p >= 1.0:
        return {"point": removed, "low": removed, "high": removed, "cluster_size": None, "linear": removed}
    linear, inside = removed / p, within / p
    cross = (removed - within) / p
    low = poisson_lower(removed, z) / p
    high = poisson_upper(within, z) / p + max(
        cross, most_removals(poisson_upper(pairs, z) / (p * p), members)
    )
    if pairs == 0:
        return {"point": inside, "low": low, "high": high, "cluster_size": None, "linear": linear}
    full_pairs = pairs / (p * p)
    k = max(2 + 3 * triples / (p * pairs), 1 + 2 * full_pairs / members if members else 2.0)
    point = inside + min(high - inside, max(cross, 2 * full_pairs / k))
    return {"point": point, "low": low, "high": high, "cluster_size": round(k, 3), "linear": linear}


# --- per stream -----------------------------------------------------------------------------------


def stream_counts(s: dict) -> dict:
    """Exact and sampled record counts of one stream's stats (read = kept + rejected)."""
    rej = s["rejected_by_reason"]
    not_sampled = rej.get(f"ingest/{NOT_SAMPLED}", 0)
    ingest = sum(n for k, n in rej.items() if k.startswith("ingest/")) - not_sampled
    dup = sum(rej.get(f"dedup/{r}", 0) for r in ("exact_duplicate", "near_duplicate"))
    live = s["read"] - ingest
    sampled = live - not_sampled
    items = sum(
        s.get("item_rejects_by_reason", {}).get(f"dedup/{r}", 0)
        for r in ("exact_duplicate", "near_duplicate")
    )
    return {
        "read": s["read"],
        "ingest_rejected": ingest,
        "live": live,
        "sampled": sampled,
        "kept": s["kept"],
        "duplicates": dup,
        "duplicate_items": items,
        "fraction": sampled / live if live else 1.0,
    }


def dedup_projection(
    counts: dict[str, dict], moments: dict[str, int], members: dict[str, float], p: float, z: float
) -> dict:
    """Per round: the estimate; per kind (a record stream, or ``interleaved_item``): the projected
    full removals (point, low, high), each kind's share of the round's estimate in proportion to
    its own linear scale-up, and of the round's upper bound in proportion to its members."""
    kinds: dict[str, list] = {"text": [], "image": []}
    for s, c in counts.items():
        kinds[ROUND_OF_RECORD[s]].append((s, c["duplicates"], c["fraction"]))
        if s == "interleaved":
            kinds["image"].append(("interleaved_item", c["duplicate_items"], c["fraction"]))
    out: dict[str, Any] = {"rounds": {}, "kinds": {}}
    for rnd, ks in kinds.items():
        if not ks:
            continue
        m = {n: moments.get(f"{rnd}/{n}", 0) for n in ("removed", "within", "pairs", "triples", "clusters")}
        full_members = sum(members.get(k, 0.0) / fk for k, _, fk in ks if fk > 0)
        est = dedup_round(m["removed"], m["within"], m["pairs"], m["triples"], p, z, full_members)
        out["rounds"][rnd] = {"sampled_clusters": m, **_rounded(est)}
        if 0 < m["pairs"] < FEW_PAIRS:
            out["rounds"][rnd]["note"] = (
                f"only {m['pairs']} duplicate pairs in the sample: each stands for about {1 / p**2:,.0f} "
                "at full size, so the point estimate is rough; a larger --sample narrows it"
            )
        linear = sum(obs / fk for _, obs, fk in ks if fk > 0)
        total_members = sum(members.get(k, 0.0) for k, _, _ in ks) or 1.0
        for k, obs, fk in ks:
            lin = obs / fk if fk > 0 else 0.0
            share = members.get(k, 0.0) / total_members
            point = lin * est["point"] / linear if linear else 0.0
            out["kinds"][k] = {
                "sample": obs,
                "point": point,
                "low": lin * est["low"] / linear if linear else 0.0,
                "linear": lin,
                "high": point + max(0.0, est["high"] - est["point"]) * share,
            }
    return out


def _rounded(d: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def weight_of(unit: str, tokens: int) -> int:
    """An example's weight in the mix unit (tokens, or 1 for examples and sequences)."""
    return tokens if unit == "tokens" else 1


def availability(
    counts: dict[str, dict], records: dict, examples: dict, dedup: dict, cfg: BuildConfig, z: float
) -> dict[str, dict[str, dict[str, float]]]:
    """Per record stream and bound (point, low, high): the projected kept records; ``factor``, how
    many times its sampled examples the full build has (live records × the mean per sampled
    record, with a normal interval from the per-record variance, less the records the larger
    dedup loss removes); and ``thin``, the share of the sample's images in kept docs that dedup at
    full size also removes (image items)."""
    out = {}
    for s, c in counts.items():
        r = records.get(s, {})
        key, key2 = ("t", "t2") if cfg.mix_unit == "tokens" else ("e", "e2")
        total, squares = float(r.get(key, 0)), float(r.get(key2, 0))
        n, live, f = c["sampled"], c["live"], c["fraction"]
        before = c["kept"] + c["duplicates"]
        lo, hi = wilson(before, n, z, 1 - f)
        d = dict(dedup["kinds"].get(s, {"point": 0.0, "low": 0.0, "high": 0.0, "linear": 0.0}))
        d["high"] = min(d["high"], live * hi)  # no more removals than records
        point = live * before / n - d["point"] if n else 0.0
        kept = {
            "point": point,
            "low": point - math.hypot(live * (before / n - lo) if n else 0.0, d["high"] - d["point"]),
            "high": point + math.hypot(live * (hi - before / n) if n else 0.0, d["point"] - d["low"]),
        }
        mean = total / n if n else 0.0
        var = (squares - n * mean * mean) / (n - 1) if n > 1 else 0.0
        se = live * math.sqrt(max(0.0, var) * (1 - f) / n) if n else 0.0
        per_kept = total / c["kept"] if c["kept"] else 0.0
        base = live * mean
        mid = base - (d["point"] - d["linear"]) * per_kept
        units = {
            "point": mid,
            "low": mid - math.hypot(z * se, (d["high"] - d["point"]) * per_kept),
            "high": mid + math.hypot(z * se, (d["point"] - d["low"]) * per_kept),
        }
        item = dedup["kinds"].get(f"{s}_item")
        shown = sum(
            v.get("images", 0) for e, by in examples.items() if record_stream(e) == s for v in by.values()
        )
        images = shown / f if f else 0.0
        thin = {
            b: min(1.0, max(0.0, (item[b] - item["linear"]) / images)) if item and images else 0.0
            for b in ("point", "low", "high")
        }
        out[s] = {
            "kept": {b: max(0.0, v) for b, v in kept.items()},
            "factor": {b: max(0.0, v) / total if total else 0.0 for b, v in units.items()},
            # the low availability plan removes the most images, the high one the fewest
            "thin": {"point": thin["point"], "low": thin["high"], "high": thin["low"]},
        }
    return out


# --- the packed result ------------------------------------------------------------------------------

Cell = tuple[str, int, int, float, float]
"""An example size class at full size: (example stream, tokens, images, examples, bytes each)."""


def expand_cells(
    histogram: dict, histogram_bytes: dict, factors: dict[str, float], thin: dict[str, float], slot: int
) -> list[Cell]:
    """The sample's example histogram at full size: each cell times its record stream's factor,
    and in a thinned stream each of a cell's images removed with probability ``thin`` (binomially,
    with its slot's tokens and its share of the bytes; an example left with no tokens is gone)."""
    cells: list[Cell] = []
    for stream, by_tokens in sorted(histogram.items()):
        rs = record_stream(stream)
        x, rho = factors.get(rs, 0.0), thin.get(rs, 0.0)
        for tokens, by_images in sorted(by_tokens.items(), key=lambda kv: int(kv[0])):
            for images, n in sorted(by_images.items(), key=lambda kv: int(kv[0])):
                t, i = int(tokens), int(images)
                each = histogram_bytes.get(stream, {}).get(tokens, {}).get(images, 0) / n if n else 0.0
                if rho <= 0 or i == 0:
                    cells.append((stream, t, i, n * x, each))
                    continue
                for j in range(i + 1):
                    w = math.comb(i, j) * (1 - rho) ** j * rho ** (i - j)
                    left = t - (i - j) * slot
                    if left > 0 and w > 0:
                        cells.append((stream, left, j, n * x * w, each * j / i))
    return cells


def simulate(cells: list[Cell], cfg: BuildConfig) -> dict[str, Any]:
    """Plan one partition of the full build from the full-size example cells and scale it to all
    partitions (module docstring)."""
    target = parse_mix(cfg.mix)
    full = sum(c[3] for c in cells)
    parts = cfg.plan_partitions or partitions_for(round(full), EXAMPLES_PER_PARTITION)
    per_part = full / parts
    cap = min(1.0, SIM_EXAMPLES / per_part) if per_part else 1.0
    want = np.array([c[3] / parts * cap for c in cells])
    count = np.floor(want).astype(np.int64)
    names = np.array([c[0] for c in cells], dtype=object)
    for s in set(names.tolist()):  # largest remainder, per stream: each keeps its total
        idx = np.flatnonzero(names == s)
        short = int(round(want[idx].sum())) - int(count[idx].sum())
        if short > 0:
            count[idx[np.argsort(-(want[idx] - count[idx]), kind="stable")[:short]]] += 1
    streams = np.array([c[0] for c in cells], dtype=object).repeat(count)
    tokens = np.array([c[1] for c in cells], np.int64).repeat(count)
    images = np.array([c[2] for c in cells], np.int64).repeat(count)
    nbytes = np.array([c[4] for c in cells]).repeat(count).round().astype(np.int64)
    groups = np.array([mix_group(s, target) for s in streams], dtype=object)
    empty = [g for g in target if not (groups == g).any()]
    if empty:  # the mix cannot be met: nothing is built
        zeros = {"tokens": 0.0, "images": 0.0, "examples": 0.0, "sequences": 0.0, "shards": 0, "bytes": 0.0}
        return {"partitions": parts, "empty": empty, "tokens_by_stream": dict.fromkeys(target, 0.0), **zeros}
    plan = plan_build(streams, tokens, images, cfg, nbytes, partition=0)
    copies = plan.copies
    scale = parts / cap
    by_group = {g: float((tokens * copies)[groups == g].sum()) * scale for g in target}
    n_images = float((images * copies).sum()) * scale
    n_examples = float(copies.sum()) * scale
    sequences = plan.sequences * scale
    body = float((nbytes * copies).sum()) * scale
    if cap >= 1.0:
        shards = parts * len(plan.shards)
    else:
        sizes = [len(s) for s in plan.shards]
        per_shard = float(np.mean(sizes[:-1])) if len(sizes) > 1 else float(cfg.shard_size)
        shards = parts * math.ceil(plan.sequences / cap / per_shard)
    return {
        "partitions": parts,
        "simulated_examples": int(count.sum()),
        "scale": scale,
        "tokens_by_stream": by_group,
        "tokens": sum(by_group.values()),
        "images": n_images,
        "examples": n_examples,
        "examples_by_stream": {
            s: float(copies[streams == s].sum()) * scale for s in sorted(set(streams.tolist()))
        },
        "sequences": sequences,
        "shards": shards,
        "fill": plan.fill,
        "images_per_sequence": n_images / sequences if sequences else 0.0,
        "bytes": body
        + sequences * sequence_bytes(cfg.seq_len)
        + n_examples * EXAMPLE_JSON_BYTES
        + n_images * TAR_MEMBER_OVERHEAD,
        "realized": plan.realized,
        "epochs": plan.epochs,
        "available_examples": full,
    }


def group_availability(cells: list[Cell], target: dict[str, float]) -> dict[str, dict[str, float]]:
    """Tokens of each mix group at full size, per record stream that feeds it."""
    out: dict[str, dict[str, float]] = {}
    for stream, tokens, _, n, _ in cells:
        at = out.setdefault(mix_group(stream, target), {})
        at[record_stream(stream)] = at.get(record_stream(stream), 0.0) + tokens * n
    return out


def stream_availability(cells: list[Cell], unit: str) -> dict[str, float]:
    """The mix-unit total of each record stream's examples at full size."""
    out: dict[str, float] = {}
    for stream, tokens, _, n, _ in cells:
        rs = record_stream(stream)
        out[rs] = out.get(rs, 0.0) + weight_of(unit, tokens) * n
    return out


# --- budget and cost ---------------------------------------------------------------------------------


def needed(
    budget_tokens: float, packed: dict[str, dict], groups: dict[str, dict], read: dict[str, int]
) -> dict[str, Any]:
    """Source records per stream for ``budget_tokens`` at the realized token shares, the
    shortfall against the records given, and the largest budget reachable without upsampling."""
    out: dict[str, Any] = {}
    used = packed["point"]["tokens_by_stream"]
    total = sum(used.values())
    if not total:
        none = dict.fromkeys(read)
        return {
            **{f"records_by_stream{x}": none for x in ("", "_low", "_high")},
            "shortfall_by_stream": none,
            "reachable_tokens": 0,
            "reachable_sequences": 0,
            "note": "nothing can be built from what the sample kept: no records per token to scale",
        }
    for b in ("point", "low", "high"):
        avail = groups[{"point": "point", "low": "high", "high": "low"}[b]]
        records: dict[str, float] = {}
        for g, u in used.items():
            share = u / total if total else 0.0
            for s, tok in avail.get(g, {}).items():
                per_record = tok / read[s] if read.get(s) else 0.0
                need = budget_tokens * share / per_record if per_record else math.inf
                records[s] = max(records.get(s, 0.0), need)
        suffix = "" if b == "point" else f"_{b}"
        out[f"records_by_stream{suffix}"] = {s: _num(v) for s, v in sorted(records.items())}
        if b == "point":
            out["shortfall_by_stream"] = {s: _num(max(0.0, v - read[s])) for s, v in sorted(records.items())}
    point = packed["point"]
    reach = min(
        (sum(groups["point"].get(g, {}).values()) / (u / total) for g, u in used.items() if u > 0),
        default=0.0,
    )
    per_sequence = point["tokens"] / point["sequences"] if point.get("sequences") else 0.0
    return out | {
        "reachable_tokens": _num(reach),
        "reachable_sequences": _num(reach / per_sequence if per_sequence else 0.0),
    }


def _num(v: float) -> float | int | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return int(round(v)) if abs(v) >= 100 else round(float(v), 3)


def cost(
    cpu_s: dict[str, float],
    wall_s: dict[str, float],
    work: dict[str, tuple[float, float]],
    plan_partitions: int,
    nodes: int,
    cores: int,
    method: str,
    driver_s: dict[str, float] | None = None,
) -> dict[str, Any]:
    """CPU-hours per phase at full size (the workers' CPU seconds per record in, measured on the
    sample, times the records in at full size, plus the driver's as measured) and the wall time
    on ``nodes`` × ``cores``."""
    phases = {}
    wall_h = 0.0
    driver_s = driver_s or {}
    for ph in PHASES:
        if ph not in cpu_s:
            continue
        sample_in, full_in = work.get(ph, (0.0, 0.0))
        cpu, driver = cpu_s[ph], driver_s.get(ph, 0.0)
        full = (cpu * (full_in / sample_in) if sample_in else cpu) + driver
        parallel = min(nodes * cores, plan_partitions) if ph == "plan" else nodes * cores
        wall_h += full / max(1, parallel) / 3600
        phases[ph] = {
            "wall_s": round(wall_s.get(ph, 0.0), 3),
            "cpu_s": round(cpu, 3),
            "driver_cpu_s": round(driver, 3),
            "records_in_sample": int(sample_in),
            "records_in_full": int(round(full_in)),
            "records_per_cpu_s": round(sample_in / cpu, 3) if cpu else None,
            "cpu_hours_full": round(full / 3600, 6),
        }
    return {
        "method": method,
        "phases": phases,
        "cpu_hours": round(sum(p["cpu_hours_full"] for p in phases.values()), 6),
        "nodes": nodes,
        "cores_per_node": cores,
        "wall_hours": round(wall_h, 6),
        "not_measured": ["write (plan writes no shards)"],
    }


# --- all of it ---------------------------------------------------------------------------------------


def project(
    stats: dict,
    cpu_s: dict[str, float],
    cfg: BuildConfig,
    plan: PlanConfig,
    cores: int,
    method: str,
    driver_s: dict[str, float] | None = None,
) -> dict:
    """The whole projection (``plan.json`` less the per-source table) from a sample run's stats."""
    z = z_of(plan.confidence)
    facts = stats["measure"]
    counts = {s: stream_counts(stats["streams"][s]) for s in STREAMS if s in stats["streams"]}
    members = _dedup_members(stats, counts)
    dedup = dedup_projection(counts, facts["dedup"], members, plan.sample, z)
    avail = availability(counts, facts["records"], facts["examples"], dedup, cfg, z)
    target = parse_mix(cfg.mix)
    slot = cfg.image_tokens + (2 if cfg.image_markers else 0)
    packed, groups, units = {}, {}, {}
    for b in ("point", "low", "high"):
        factors = {s: a["factor"][b] for s, a in avail.items()}
        thin = {s: a["thin"][b] for s, a in avail.items()}
        cells = expand_cells(facts["histogram"], facts["histogram_bytes"], factors, thin, slot)
        try:
            packed[b] = simulate(cells, cfg)
        except UsageError as e:
            zeros = dict.fromkeys(target, 0.0)
            packed[b] = {"sequences": 0, "shards": 0, "tokens_by_stream": zeros, "error": str(e)}
        groups[b] = group_availability(cells, target)
        units[b] = stream_availability(cells, cfg.mix_unit)
    point = packed["point"]
    ideal = (
        {b: ideal_mix(groups[b], target, cfg.upsample) for b in groups} if cfg.mix_unit == "tokens" else {}
    )
    projected: dict[str, Any] = {}
    for name, get in (
        ("kept_records_by_stream", lambda b: {s: avail[s]["kept"][b] for s in avail}),
        ("available_by_stream", lambda b: units[b]),
        ("tokens_by_stream", lambda b: _spread(packed, ideal, b)),
    ):
        for b in ("point", "low", "high"):
            suffix = "" if b == "point" else f"_{b}"
            projected[name + suffix] = {k: _num(v) for k, v in get(b).items()}
    for name in ("tokens", "sequences", "shards", "bytes", "images", "examples"):
        projected[name] = _num(point.get(name, 0))
        if name in ("tokens", "sequences", "shards", "bytes"):
            values = [packed[b].get(name, 0) for b in packed]
            if name == "tokens" and ideal:
                values += [sum(ideal["low"].values()), sum(ideal["high"].values())]
            projected[f"{name}_low"], projected[f"{name}_high"] = _num(min(values)), _num(max(values))
    group_avail = {g: sum(v.values()) for g, v in groups["point"].items()}
    limiting = min(target, key=lambda g: group_avail.get(g, 0.0) / target[g]) if target else None
    projected |= {
        "fill": round(point.get("fill", 0.0), 6),
        "images_per_sequence": round(point.get("images_per_sequence", 0.0), 3),
        "mix": {
            "target": target,
            "unit": cfg.mix_unit,
            "realized": {k: round(v, 6) for k, v in point.get("realized", {}).items()},
        },
        "limiting_stream": limiting,
        "epochs": point.get("epochs", {}),
        "plan_partitions": point.get("partitions"),
        "examples_by_stream": {k: _num(v) for k, v in point.get("examples_by_stream", {}).items()},
    }
    if "error" in point or "empty" in point:
        projected["problem"] = point.get("error") or f"no {point['empty'][0]} examples at full size"
    read = {s: c["read"] for s, c in counts.items()}
    budget = plan.budget_tokens
    if plan.budget_sequences is not None and point.get("sequences"):
        budget = plan.budget_sequences * point["tokens"] / point["sequences"]
    work = _work(stats, counts, avail, point)
    out = {
        "streams": {
            s: {**c, **_stream_rates(stats["streams"][s], c, z), **_per_kept(facts["examples"], s, c, slot)}
            for s, c in counts.items()
        },
        "dedup": {
            "estimator": "moments of the sampled duplicate clusters (see mm1data.plan.project)",
            "assumption": (
                "copies inside one record are drawn with it (scale 1/p); across records, the round's "
                "clusters span about one number k of records, k̂ = 2 + 3T/(pP) (P pairs, T triples)"
            ),
            "rounds": dedup["rounds"],
            "removals_by_kind": {k: {b: _num(v) for b, v in d.items()} for k, d in dedup["kinds"].items()},
        },
        "projected": projected,
        "needed": None,
        "cost": cost(
            cpu_s, stats["timings_s"], work, point.get("partitions") or 1, plan.nodes, cores, method, driver_s
        ),
    }
    if budget is not None:
        out["needed"] = {
            "budget_tokens": _num(budget),
            **({"budget_sequences": plan.budget_sequences} if plan.budget_sequences is not None else {}),
            **needed(budget, packed, groups, read),
        }
        out["needed"]["met"] = bool(point.get("tokens", 0) >= budget)
        out["needed"] |= budget_cost(
            out["needed"], read, out["cost"], point.get("available_examples", 0.0), cfg.plan_partitions
        )
    return out


def budget_cost(
    need: dict, read: dict[str, int], cost_: dict, examples: float, plan_partitions: int | None
) -> dict[str, float | None]:
    """CPU-hours and wall hours at the budget: each phase's CPU-hours for the given corpus times
    the records the budget needs over the records given (every phase's records in grow in
    proportion), the plan phase spread over the plan partitions of that size."""
    out: dict[str, float | None] = {}
    given = sum(read.values())
    cores = cost_["nodes"] * cost_["cores_per_node"]
    for suffix in ("", "_low", "_high"):
        records = need[f"records_by_stream{suffix}"]
        if given and records and all(v is not None for v in records.values()):
            ratio = sum(max(v, 0) for v in records.values()) / given
            parts = plan_partitions or partitions_for(round(examples * ratio), EXAMPLES_PER_PARTITION)
            cpu = {ph: c["cpu_hours_full"] * ratio for ph, c in cost_["phases"].items()}
            wall = sum(h / min(cores, parts if ph == "plan" else cores) for ph, h in cpu.items())
            out[f"cpu_hours{suffix}"] = _num(sum(cpu.values()))
            out[f"wall_hours{suffix}"] = _num(wall)
        else:
            out[f"cpu_hours{suffix}"] = out[f"wall_hours{suffix}"] = None
    return out


def ideal_mix(
    groups: dict[str, dict[str, float]], target: dict[str, float], upsample: bool
) -> dict[str, float]:
    """Tokens per mix group by the mix rule alone (tokens as the unit, examples infinitely fine):
    the scarcest group whole and the others at the ratio, or with ``upsample`` the largest whole."""
    avail = {g: sum(groups.get(g, {}).values()) for g in target}
    scale = (max if upsample else min)(avail[g] / w for g, w in target.items())
    return {g: w * scale for g, w in target.items()}


def _spread(packed: dict[str, dict], ideal: dict[str, dict], bound: str) -> dict[str, float]:
    """Tokens per stream: the point plan's, or the least (low) / most (high) of the three plans and
    of the mix rule's ideal at each bound (the mix places whole examples, and refits the ratio
    when they do not meet it, so a plan may place a little less than the rule; at full size with
    many examples the two agree)."""
    pick = {"point": lambda v: v[0], "low": min, "high": max}[bound]
    names = packed["point"].get("tokens_by_stream", {})
    return {
        s: pick(
            [packed[b].get("tokens_by_stream", {}).get(s, 0.0) for b in ("point", "low", "high")]
            + ([ideal[bound].get(s, 0.0)] if bound != "point" and ideal else [])
        )
        for s in names
    }


def _per_kept(examples: dict, stream: str, c: dict, slot: int) -> dict[str, float | None]:
    """Mean text tokens (image slots left out) and images per kept record of a stream, in the sample."""
    sums = [v for e, by in examples.items() if record_stream(e) == stream for v in by.values()]
    tokens, images = sum(v.get("tokens", 0) for v in sums), sum(v.get("images", 0) for v in sums)
    kept = c["kept"]
    return {
        "mean_text_tokens_per_kept": round((tokens - slot * images) / kept, 2) if kept else None,
        "mean_images_per_kept": round(images / kept, 3) if kept else None,
    }


def _stream_rates(s: dict, c: dict, z: float) -> dict:
    kept_frac = c["kept"] / c["sampled"] if c["sampled"] else 0.0
    lo, hi = wilson(c["kept"], c["sampled"], z, 1 - c["fraction"])
    return {
        "kept_fraction": round(kept_frac, 6),
        "kept_fraction_low": round(lo, 6),
        "kept_fraction_high": round(hi, 6),
        "rejected_by_reason": {
            k: v for k, v in s["rejected_by_reason"].items() if k != f"ingest/{NOT_SAMPLED}"
        },
        "item_rejects_by_reason": s.get("item_rejects_by_reason", {}),
    }


def _dedup_members(stats: dict, counts: dict[str, dict]) -> dict[str, float]:
    """Sampled members of each dedup kind (records, and image items of interleaved docs)."""
    members = {s: float(c["kept"] + c["duplicates"]) for s, c in counts.items()}
    phases = {p["phase"]: p for p in stats.get("dedup", {}).get("phases", [])}
    images = phases.get("exact_image", {}).get("in", 0)
    members["interleaved_item"] = max(0.0, images - members.get("caption", 0.0))
    return members


def _work(stats: dict, counts: dict, avail: dict, point: dict) -> dict[str, tuple[float, float]]:
    """Records into each phase: (in the sample, at full size)."""
    read = sum(c["read"] for c in counts.values())
    filt = (sum(c["sampled"] for c in counts.values()), sum(c["live"] for c in counts.values()))
    dedup_in = sum(c["kept"] + c["duplicates"] for c in counts.values())
    dedup_full = sum(
        c["live"] * (c["kept"] + c["duplicates"]) / c["sampled"] for c in counts.values() if c["sampled"]
    )
    kept = sum(c["kept"] for c in counts.values())
    kept_full = sum(a["kept"]["point"] for a in avail.values())
    examples = sum(stats["measure"]["records"].get(s, {}).get("e", 0) for s in counts)
    return {
        "ingest": (read, read),
        "filter": filt,
        "dedup": (dedup_in, dedup_full),
        "tokenize": (kept, kept_full),
        "plan": (examples, point.get("available_examples", 0.0)),
    }
