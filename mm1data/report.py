"""Human-readable summaries of job stats (the JSON form is what gets written to disk)."""

from __future__ import annotations

import click


def print_stats(stats: dict) -> None:
    """Print per-stream counts (read = kept + rejected) and rejects by reason as a table."""
    streams = stats.get("streams", {})
    click.echo(f"{'stream':<20}{'read':>10}{'kept':>10}{'rejected':>10}")
    for name, s in streams.items():
        click.echo(f"{name:<20}{s['read']:>10}{s['kept']:>10}{s['rejected']:>10}")
    for name, s in streams.items():
        for reason, n in s.get("rejected_by_reason", {}).items():
            click.echo(f"  rejected {name:<14}{reason:<40}{n:>8}")
        for reason, n in s.get("item_rejects_by_reason", {}).items():
            click.echo(f"  item rejects {name:<10}{reason:<40}{n:>8}")
    if "wall_s" in stats:
        click.echo(f"wall time {stats['wall_s']:.1f} s (Ray start {stats.get('ray_start_s', 0):.1f} s)")
