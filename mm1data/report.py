"""Human-readable summaries of job stats (the JSON form is what gets written to disk)."""

from __future__ import annotations

import json
import sys
import time

import click


class StageLog:
    """One line on stderr as each stage of a job ends: text for people, JSON lines for machines
    (``--log-json``), or nothing (``--quiet``). Also remembers which stages a resume skipped."""

    def __init__(self, quiet: bool = False, json_lines: bool = False) -> None:
        self.quiet = quiet
        self.json_lines = json_lines
        self.resumed_stages: list[str] = []

    @property
    def show_progress(self) -> bool:
        """Whether Ray Data's progress bars suit this output (a person at a terminal)."""
        return not (self.quiet or self.json_lines) and sys.stderr.isatty()

    def _emit(self, event: dict) -> None:
        if self.json_lines:
            click.echo(json.dumps({"time": round(time.time(), 3), **event}), err=True)
        elif not self.quiet:
            counts = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("event", "stage", "seconds"))
            took = f" in {event['seconds']:.1f} s" if "seconds" in event else ""
            click.echo(f"[mm1data] {event['stage']} {event['event']}{took}: {counts}", err=True)

    def stage(self, name: str, seconds: float, **counts: object) -> None:
        """A stage finished after ``seconds``; ``counts`` summarise what it did."""
        self._emit({"event": "done", "stage": name, "seconds": round(seconds, 3), **counts})

    def resumed(self, name: str, counts: dict) -> None:
        """A stage was read back from an earlier run's checkpoint instead of being recomputed."""
        self.resumed_stages.append(name)
        self._emit({"event": "resumed from checkpoint", "stage": name, **counts})


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


def print_build_summary(stats: dict) -> None:
    """The ``mm1data build`` summary: records per stage, rejects by reason, examples, mix, fill, shards."""
    phases = ("ingest", "filter", "dedup")
    click.echo(
        f"{'stream':<14}{'read':>8}{'ingest':>8}{'filter':>8}{'dedup':>8}   (records kept after each stage)"
    )
    for name, s in stats["streams"].items():
        lost = {p: 0 for p in phases}
        for key, n in s["rejected_by_reason"].items():
            stage = key.split("/", 1)[0]
            lost[stage if stage in ("ingest", "dedup") else "filter"] += n
        alive, cells = s["read"], []
        for p in phases:
            alive -= lost[p]
            cells.append(alive)
        click.echo(f"{name:<14}{s['read']:>8}" + "".join(f"{c:>8}" for c in cells))
    click.echo("rejects by reason:")
    for name, s in stats["streams"].items():
        for reason, n in s["rejected_by_reason"].items():
            click.echo(f"  {name:<18}{reason:<44}{n:>8}")
        for reason, n in s.get("item_rejects_by_reason", {}).items():
            click.echo(f"  {name + ' item':<18}{reason:<44}{n:>8}")
    ex = stats["examples"]
    for key, n in ex["rejected_by_reason"].items():
        stream, stage, reason = key.split("/", 2)
        click.echo(f"  {stream:<18}{stage + '/' + reason + ' (examples)':<44}{n:>8}")
    click.echo(f"{'examples':<20}{'rendered':>10}{'used':>10}{'placed':>10}{'epochs':>10}")
    for name, n in ex["rendered"].items():
        used, placed = ex["used"].get(name, 0), ex["placed_with_repeats"].get(name, 0)
        click.echo(f"{name:<20}{n:>10}{used:>10}{placed:>10}{stats['epochs'].get(name, 0):>10.3f}")
    mix = stats["mix"]
    click.echo(
        f"mix by {mix['unit']}: "
        + ", ".join(
            f"{k} {100 * v:.1f}% → {100 * mix['realized'].get(k, 0):.2f}%" for k, v in mix["target"].items()
        )
    )
    t = stats["totals"]
    share = 100 * t["fill"] / max(t["attainable_fill"], 1e-9)
    click.echo(
        f"packed {t['examples']} examples into {t['sequences']} sequences in {t['shards']} shards: "
        f"{t['tokens']:,} tokens, {t['images']} images, fill {t['fill']:.4f} "
        f"(attainable {t['attainable_fill']:.4f}, {share:.1f}% of it)"
    )
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in stats["timings_s"].items())
    click.echo(
        f"wrote {stats['output']} ({t['bytes']:,} bytes); wall time {stats['wall_s']:.1f} s ({timing})"
    )
