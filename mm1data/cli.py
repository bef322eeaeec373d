"""The ``mm1data`` command line: a thin click layer that parses, calls into the package, prints.

Bad paths and configs raise :class:`~mm1data.errors.UsageError`; the group turns them into one
``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import click

from mm1data import __version__
from mm1data.config import SAMPLE_RECIPE, Recipe, Sources, SourceSpec, load_recipe, to_dict
from mm1data.errors import UsageError


class Mm1Group(click.Group):
    """Click group that maps :class:`UsageError` to one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=Mm1Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mm1data")
def main() -> None:
    """mm1data: raw multimodal web data to MM1-style packed WebDataset shards, and a trainer."""


def _parse_source(value: str) -> SourceSpec:
    """``PATH`` or ``FORMAT:PATH`` (``s3://`` kept intact); ``PATH@IMAGES`` adds an image folder."""
    fmt = "auto"
    head, sep, rest = value.partition(":")
    if sep and not rest.startswith("//") and head.isidentifier() and len(head) > 1:
        fmt, value = head, rest
    images = None
    if "@" in value:
        value, images = value.split("@", 1)
    return SourceSpec(path=value, format=fmt, images=images)


def source_options(fn: Callable) -> Callable:
    """The input options shared by ``ingest`` and ``build``."""
    opts = [
        click.option("--config", "config", type=click.Path(), help="YAML recipe (see pipelines/)."),
        click.option(
            "--synthetic-captions", multiple=True, help="Synthetic captions JSONL keyed by image sha256 or id."
        ),
        click.option("--text", multiple=True, help="Text docs: JSONL(.gz/.zst) Dolma/C4, or Parquet."),
        click.option(
            "--interleaved", multiple=True, help="Interleaved docs: MMC4 jsonl[@IMAGE_DIR], OBELICS parquet, .zim."
        ),
        click.option(
            "--captions",
            multiple=True,
            help="Caption pairs: COCO json@IMAGE_DIR, WebDataset tars, Parquet/CSV. [FORMAT:]PATH, repeatable.",
        ),
        click.option("--ray-address", default=None, help="Join an existing Ray cluster instead of a local one."),
    ]
    for opt in opts:
        fn = opt(fn)
    return fn


def recipe_from_options(
    config: str | None,
    captions: tuple[str, ...],
    interleaved: tuple[str, ...],
    text: tuple[str, ...],
    synthetic_captions: tuple[str, ...],
    ray_address: str | None,
) -> Recipe:
    """The recipe a command runs: ``--config``, else the bundled sample; source flags replace its sources."""
    recipe = load_recipe(config) if config else None
    flag_sources = Sources(
        captions=tuple(map(_parse_source, captions)),
        interleaved=tuple(map(_parse_source, interleaved)),
        text=tuple(map(_parse_source, text)),
        synthetic_captions=tuple(map(_parse_source, synthetic_captions)),
    )
    if recipe is None:
        recipe = Recipe() if not flag_sources.is_empty() else load_recipe(SAMPLE_RECIPE)
    if not flag_sources.is_empty():
        recipe = dataclasses.replace(recipe, sources=flag_sources)
    if ray_address:
        recipe = dataclasses.replace(recipe, ray=dataclasses.replace(recipe.ray, address=ray_address))
    return recipe


@main.command()
@source_options
@click.option("--output", default="./mm1data-ingest", show_default=True, help="Output folder (local or s3://).")
@click.option("--quiet", is_flag=True, help="No progress output.")
def ingest(output: str, quiet: bool, **source_kw: Any) -> None:
    """Read raw sources into normalized Parquet per stream, rejects, and stats.json.

    With no source flags and no --config, ingests the bundled sample (pipelines/sample.yaml).
    """
    from mm1data.ingest.job import run_ingest
    from mm1data.report import print_stats

    recipe = recipe_from_options(**source_kw)
    stats = run_ingest(recipe, output, quiet=quiet)
    print_stats(stats)


@main.command("filter")
@click.option("--input", "input_dir", required=True, type=click.Path(), help="`mm1data ingest` output.")
@click.option("--output", required=True, type=click.Path(), help="Output folder.")
@click.option("--config", "config", type=click.Path(), help="YAML recipe; its `filters:` section is used.")
def filter_cmd(input_dir: str, output: str, config: str | None) -> None:
    """Filter ingested streams: kept Parquet per stream, rejects/, and stats.json per stage."""
    from mm1data.filters.job import run_filter

    recipe = load_recipe(config) if config else Recipe()
    stats = run_filter(recipe, input_dir, output)
    for stream, s in stats["streams"].items():
        click.echo(f"{stream}: read {s['read']}, kept {s['kept']}, rejected {s['rejected']}")
        for st in s["stages"]:
            dropped = ", ".join(f"{k}={v}" for k, v in st["dropped"].items()) or "-"
            line = f"  {st['stage']:<18} in {st['in']:>7}  kept {st['kept']:>7}  {st['seconds']:>7.2f}s"
            click.echo(f"{line}  {dropped}")


@main.command()
@source_options
@click.option("--output", default="./mm1data-out", show_default=True, help="Output folder (local or s3://).")
@click.option("--mix", default=None, help="caption:interleaved:text weights, e.g. 45:45:10, or name=weight,...")
def build(output: str, mix: str | None, **source_kw: Any) -> None:
    """Ingest, filter, dedup, tokenize, pack and mix into WebDataset shards plus manifest.json.

    Not built yet (see the open build issue).
    """
    raise UsageError("`mm1data build` is not implemented yet")


@main.group()
def inspect() -> None:
    """Look inside packed shards and datasets."""


@inspect.command("shard")
@click.argument("path")
def inspect_shard(path: str) -> None:
    """Summarize one shard: sequences, fill, images, tokens per stream, integrity check. (Not built yet.)"""
    raise UsageError("`mm1data inspect shard` is not implemented yet")


@inspect.command("dataset")
@click.argument("path")
def inspect_dataset(path: str) -> None:
    """Show a dataset's manifest as a table; --verify re-hashes every shard. (Not built yet.)"""
    raise UsageError("`mm1data inspect dataset` is not implemented yet")


@main.command()
@click.argument("src")
@click.argument("dest")
def publish(src: str, dest: str) -> None:
    """Upload a local build to s3://bucket/prefix, verified, manifest.json last. (Not built yet.)"""
    raise UsageError("`mm1data publish` is not implemented yet")


@main.command()
@click.option("--data", default=None, help="Packed dataset folder or s3:// prefix (mm1data/packed-v1).")
@click.option("--model", default=None, help="Preset: tiny, mm1-100m, mm1-1b, mm1-3b.")
@click.option("--steps", type=int, default=None, help="Total optimiser steps (the LR schedule spans them).")
@click.option("--ckpt-dir", default=None, help="Folder for latest.pt (written atomically).")
@click.option("--resume", is_flag=True, default=None, help="Continue from --ckpt-dir/latest.pt if present.")
@click.option("--config", "config", type=click.Path(), help="YAML recipe; its `train:` section is the base.")
@click.option("--batch-size", type=int, default=None, help="Global batch in packed sequences.")
@click.option("--lr", type=float, default=None, help="Peak LR (default: MM1's fit from the LM size).")
@click.option("--seed", type=int, default=None, help="Data order and init seed.")
@click.option("--z-loss", type=float, default=None, help="z-loss weight (MM1-30B: 1e-4).")
@click.option("--freeze-vision", is_flag=True, default=None, help="Do not train the ViT.")
@click.option("--vision-weights", default=None, help="Local CLIP/OpenCLIP ViT weights to start from.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile each block.")
@click.option("--fsdp", is_flag=True, default=None, help="Shard with FSDP2 instead of DDP.")
@click.option("--stop-after", type=int, default=None, help="Leave after this many steps (checkpointed).")
@click.option("--num-workers", type=int, default=None, help="Loader processes per rank.")
@click.option("--set", "overrides", multiple=True, help="Model field override, e.g. dim=512 (repeatable).")
def train(config: str | None, compile_: bool | None, overrides: tuple[str, ...], **flags: Any) -> None:
    """Train a small MM1 model (ViT + C-Abstractor + decoder LM) on packed shards.

    JSON lines on stdout (step, loss, per-stream loss, lr, throughput, MFU), a human line on
    stderr. Multi-process: torchrun --nproc-per-node N -m mm1data.cli train ...
    """
    import yaml

    from mm1data.config import TrainConfig, from_dict
    from mm1data.train.train import train as run_train

    cfg = load_recipe(config).train if config else TrainConfig()
    given = {k: v for k, v in flags.items() if v is not None}
    if compile_ is not None:
        given["compile"] = compile_
    if overrides:
        extra = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--set expects FIELD=VALUE, got {item!r}")
            extra[key] = yaml.safe_load(value)
        given["model_overrides"] = {**cfg.model_overrides, **extra}
    cfg = from_dict(TrainConfig, {**to_dict(cfg), **given}, where="train")
    run_train(cfg)


if __name__ == "__main__":
    main()
