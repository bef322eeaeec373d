"""The readable ``mm1data plan`` summary (``plan.json`` holds every number)."""

from __future__ import annotations

import click


def _n(v: float | None) -> str:
    if v is None:
        return "-"
    v = float(v)
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if abs(v) >= div * 10:
            return f"{v / div:,.1f}{unit}"
    return f"{v:,.0f}" if abs(v) >= 10 else f"{v:,.2f}".rstrip("0").rstrip(".")


def _range(d: dict, key: str, fmt=_n) -> str:
    return f"{fmt(d.get(key))} [{fmt(d.get(key + '_low'))}, {fmt(d.get(key + '_high'))}]"


def print_plan_summary(plan: dict) -> None:
    """Print what a plan projects: per stream and source, dedup, the packed result, budget, cost."""
    s, p = plan["sample"], plan["projected"]
    conf = f"{100 * plan['plan']['confidence']:.0f}%"
    click.echo(
        f"mm1data plan: {100 * s['fraction']:g}% sample (seed {s['seed']}) of {s['records_read']:,} records "
        f"read: {s['records_sampled']:,} went on through filter, dedup, tokenize and plan "
        f"({s['wall_s']:.1f} s); intervals at {conf}"
    )
    click.echo(
        f"\n{'stream / source':<34}{'read':>10}{'sampled':>9}{'kept':>7}{'kept %':>8} "
        f"{'[' + conf + ' CI]':<16}{'text tok/kept':>14}{'images/kept':>12}{'projected kept':>16}"
    )
    for stream, st in plan["streams"].items():
        kept_p = p["kept_records_by_stream"]
        line = (
            f"{stream:<34}{st['read']:>10,}{st['sampled']:>9,}{st['kept']:>7,}"
            f"{100 * st['kept_fraction']:>7.1f}% [{100 * st['kept_fraction_low']:.1f}, "
            f"{100 * st['kept_fraction_high']:.1f}]"
        )
        lo, hi = p["kept_records_by_stream_low"].get(stream), p["kept_records_by_stream_high"].get(stream)
        per = f"{_n(st.get('mean_text_tokens_per_kept')):>14}{_n(st.get('mean_images_per_kept')):>12}"
        click.echo(f"{line:<84}{per}{_n(kept_p.get(stream)):>16} [{_n(lo)}, {_n(hi)}]")
        for label, src in plan["sources"].get(stream, {}).items():
            name = label if len(label) <= 30 else "…" + label[-29:]
            frac = src["kept_fraction"]
            click.echo(
                f"  {name:<32}{src['read']:>10,}{src['sampled']:>9,}{src['kept_sample']:>7,}"
                f"{(100 * frac if frac is not None else 0):>7.1f}% [{100 * src['kept_fraction_low']:.1f}, "
                f"{100 * src['kept_fraction_high']:.1f}]".ljust(84)
                + f"{_n(src['mean_text_tokens_per_kept']):>14}{_n(src['mean_images_per_kept']):>12}"
                f"{_n(src['projected_kept']):>16}"
            )
    click.echo("\nrejects in the sample, by reason:")
    for stream, st in plan["streams"].items():
        for reason, n in {
            **st["rejected_by_reason"],
            **{f"{k} (items)": v for k, v in st["item_rejects_by_reason"].items()},
        }.items():
            click.echo(f"  {stream:<14}{reason:<48}{n:>8,}")
    click.echo(f"\ndedup at full size; assumption: {plan['dedup']['assumption']}")
    for rnd, r in plan["dedup"]["rounds"].items():
        c = r["sampled_clusters"]
        k = f", k̂ {r['cluster_size']}" if r.get("cluster_size") else ""
        click.echo(
            f"  {rnd:<6} sample: {c['removed']} removed in {c['clusters']} clusters "
            f"({c['pairs']} pairs, {c['triples']} triples{k}) → full: {_n(r['point'])} removed "
            f"[{_n(r['low'])}, {_n(r['high'])}] (linear scale-up {_n(r['linear'])})"
        )
        if r.get("note"):
            click.echo(f"         note: {r['note']}")
    mix = p["mix"]
    click.echo(f"\npacked at full size (mix by {mix['unit']}, plan partitions: {p.get('plan_partitions')}):")
    if p.get("problem"):
        click.echo(f"  nothing can be built: {p['problem']}")
    if s["packed"].get("unplanned"):
        click.echo(f"  (the sample itself could not be planned: {s['packed']['unplanned']})")
    for g in mix["target"]:
        click.echo(
            f"  {g:<18} tokens {_n(p['tokens_by_stream'].get(g))} [{_n(p['tokens_by_stream_low'].get(g))}, "
            f"{_n(p['tokens_by_stream_high'].get(g))}]  target {100 * mix['target'][g]:.1f}% → "
            f"{100 * mix['realized'].get(g, 0):.2f}%"
        )
    click.echo(
        f"  sequences {_range(p, 'sequences')}, shards {_range(p, 'shards')}, "
        f"bytes {_range(p, 'bytes')}, fill {p['fill']:.4f}, images/sequence {p['images_per_sequence']:.2f}"
    )
    epochs = ", ".join(f"{k} {v:.3f}" for k, v in p["epochs"].items())
    click.echo(f"  limiting stream: {p['limiting_stream']} (epochs: {epochs})")
    need = plan.get("needed")
    if need:
        click.echo(f"\nbudget {_n(need['budget_tokens'])} tokens" + (" (met)" if need["met"] else ":"))
        if need.get("note"):
            click.echo(f"  {need['note']}")
        for stream, n in need["records_by_stream"].items():
            if n is None:
                continue
            short = need["shortfall_by_stream"].get(stream) or 0
            have = plan["streams"][stream]["read"]
            lo, hi = need["records_by_stream_low"].get(stream), need["records_by_stream_high"].get(stream)
            gap = f"short by {_n(short)}" if short else "enough"
            hi_s = _n(hi) if hi is not None else "no bound"
            click.echo(
                f"  {stream:<14} needs {_n(n)} [{_n(lo)}, {hi_s}] source records, given {_n(have)}: {gap}"
            )
        click.echo(
            f"  largest budget without --upsample: {_n(need['reachable_tokens'])} tokens "
            f"({_n(need['reachable_sequences'])} sequences)"
        )
        if need.get("cpu_hours") is not None:
            c = plan["cost"]
            click.echo(
                f"  at the budget: {_n(need['cpu_hours'])} CPU-h, {_n(need['wall_hours'])} h on "
                f"{c['nodes']} × {c['cores_per_node']} cores"
            )
    c = plan["cost"]
    click.echo(f"\ncost at full size ({c['method']}):")
    for ph, r in c["phases"].items():
        rate = f"{_n(r['records_per_cpu_s'])} records/CPU-s" if r["records_per_cpu_s"] else "-"
        click.echo(
            f"  {ph:<10} sample: workers {r['cpu_s']:.1f} + driver {r['driver_cpu_s']:.1f} CPU-s "
            f"({r['wall_s']:.1f} s wall, {rate}) → {r['cpu_hours_full']:.4g} CPU-h for "
            f"{_n(r['records_in_full'])} records"
        )
    click.echo(
        f"  total {c['cpu_hours']:.4g} CPU-h; wall {c['wall_hours']:.4g} h on {c['nodes']} × "
        f"{c['cores_per_node']} cores (not measured: {', '.join(c['not_measured'])})"
    )
    click.echo(f"\nwrote {plan['output'].rstrip('/')}/plan.json")
