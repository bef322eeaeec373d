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
            "--synthetic-captions",
            multiple=True,
            help="Synthetic captions JSONL keyed by image sha256 or id.",
        ),
        click.option("--text", multiple=True, help="Text docs: JSONL(.gz/.zst) Dolma/C4, or Parquet."),
        click.option(
            "--interleaved",
            multiple=True,
            help="Interleaved docs: MMC4 jsonl[@IMAGE_DIR], OBELICS parquet, .zim, web crawl .warc(.gz).",
        ),
        click.option(
            "--captions",
            multiple=True,
            help="Caption pairs: COCO json@IMAGES, WebDataset tars, Parquet/CSV. [FORMAT:]PATH, repeatable.",
        ),
        click.option(
            "--ray-address", default=None, help="Join an existing Ray cluster instead of a local one."
        ),
        click.option(
            "--download",
            is_flag=True,
            default=False,
            help="Fetch images given only as URLs (caption tables, MMC4, OBELICS); see `download:`.",
        ),
    ]
    for opt in opts:
        fn = opt(fn)
    return fn


SOURCE_FLAGS = ("config", "captions", "interleaved", "text", "synthetic_captions", "ray_address", "download")


def recipe_from_options(
    config: str | None,
    captions: tuple[str, ...],
    interleaved: tuple[str, ...],
    text: tuple[str, ...],
    synthetic_captions: tuple[str, ...],
    ray_address: str | None,
    download: bool = False,
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
    if download:
        recipe = dataclasses.replace(recipe, download=dataclasses.replace(recipe.download, enabled=True))
    return recipe


BUILD_FLAGS = (
    "mix",
    "mix_unit",
    "upsample",
    "seed",
    "pack_mode",
    "tokenizer",
    "seq_len",
    "shard_size",
    "workers",
)


def build_options(fn: Callable) -> Callable:
    """The recipe options shared by ``build`` and ``plan`` (they override the recipe's ``build:``)."""
    opts = [
        click.option(
            "--mix", default=None, help="caption:interleaved:text, e.g. 45:45:10, or caption=40,text=10,..."
        ),
        click.option("--mix-unit", type=click.Choice(["tokens", "examples", "sequences"]), default=None),
        click.option(
            "--upsample",
            is_flag=True,
            default=None,
            help="Repeat short streams instead of cutting long ones.",
        ),
        click.option("--seed", type=int, default=None, help="Caption choice, selection and order seed."),
        click.option("--pack-mode", type=click.Choice(["mixed", "per-stream"]), default=None),
        click.option("--tokenizer", default=None, help="tokenizer.json (default: the bundled GPT-2 one)."),
        click.option("--seq-len", type=int, default=None, help="Tokens per packed sequence (default 4096)."),
        click.option("--shard-size", type=int, default=None, help="Sequences per shard (at most)."),
        click.option("--workers", type=int, default=None, help="Ray workers for tokenize and write."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def recipe_with_build_flags(kw: dict[str, Any]) -> Recipe:
    """The recipe of the source options in ``kw`` with the build flags in ``kw`` applied (both popped)."""
    from mm1data.config import BuildConfig, from_dict

    given = {k: kw.pop(k) for k in BUILD_FLAGS}
    recipe = recipe_from_options(**{k: kw.pop(k) for k in SOURCE_FLAGS})
    given = {k: v for k, v in given.items() if v is not None}
    cfg = from_dict(BuildConfig, {**to_dict(recipe.build), **given}, where="build")
    return dataclasses.replace(recipe, build=cfg)


@main.command()
@source_options
@click.option(
    "--output", default="./mm1data-ingest", show_default=True, help="Output folder (local or s3://)."
)
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


@main.command("dedup")
@click.option(
    "--input", "input_dir", required=True, type=click.Path(), help="`mm1data ingest` or `filter` output."
)
@click.option("--output", required=True, type=click.Path(), help="Output folder.")
@click.option("--config", "config", type=click.Path(), help="YAML recipe; its `dedup:` section is used.")
def dedup_cmd(input_dir: str, output: str, config: str | None) -> None:
    """Remove exact and near duplicates across streams: kept Parquet, rejects/, stats.json."""
    from mm1data.dedup.job import run_dedup

    recipe = load_recipe(config) if config else Recipe()
    stats = run_dedup(recipe, input_dir, output)
    for stream, s in stats["streams"].items():
        click.echo(f"{stream}: read {s['read']}, kept {s['kept']}, rejected {s['rejected']}")
    for ph in stats["phases"]:
        dropped = ", ".join(f"{k}={v}" for k, v in ph["dropped"].items()) or "-"
        click.echo(f"  {ph['phase']:<14} in {ph['in']:>7} {ph['unit']:<14} kept {ph['kept']:>7}  {dropped}")
    steps = ", ".join(f"{k} {v:.2f}s" for k, v in stats["steps"].items())
    click.echo(f"  steps: {steps}; total {stats['seconds']:.2f}s")


@main.command()
@source_options
@click.option("--output", default="./mm1data-out", show_default=True, help="Output folder (local or s3://).")
@build_options
@click.option("--restart", is_flag=True, help="Ignore the checkpoints of an earlier run; start over.")
@click.option("--quiet", is_flag=True, help="No progress lines and no summary table.")
@click.option("--log-json", is_flag=True, help="Progress as JSON lines on stderr; stats JSON on stdout.")
def build(output: str, quiet: bool, restart: bool, log_json: bool, **kw: Any) -> None:
    """Ingest, filter, dedup, tokenize, pack and mix into WebDataset shards plus manifest.json.

    With no source flags and no --config, builds the bundled sample (pipelines/sample.yaml).
    These flags override the recipe's `build:` section (see BuildConfig for every field).
    Rerunning the same command after a crash resumes from the checkpoints in OUTPUT/_work.
    """
    import json

    from mm1data.build import run_build
    from mm1data.report import StageLog, print_build_summary

    recipe = recipe_with_build_flags(kw)
    log = StageLog(quiet=quiet, json_lines=log_json)
    stats = run_build(recipe, output, restart=restart, log=log)
    if log_json:
        click.echo(json.dumps(stats))
    elif not quiet:
        print_build_summary(stats)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", required=True, help="Output folder (local or s3://).")
@click.option("--url-col", default=None, help="URL column (default: url, URL or image_url).")
@click.option("--caption-col", default=None, help="Caption column (default: caption, TEXT, text, ...).")
@click.option(
    "--hash-col", default=None, help="Column with the image's expected sha256 (or md5, see recipe)."
)
@click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds per attempt (default 10).")
@click.option("--retries", type=int, default=None, help="Retries on retryable failures (default 2).")
@click.option("--retry-failed", is_flag=True, default=None, help="Refetch URLs that failed retryably before.")
@click.option(
    "--image-size", type=int, default=None, help="Center-crop to N×N JPEG (default: keep the bytes)."
)
@click.option("--jpeg-quality", type=int, default=95, show_default=True, help="--image-size JPEG quality.")
@click.option("--shard-size", type=int, default=10_000, show_default=True, help="Rows per shard.")
@click.option("--config", "config", type=click.Path(), help="YAML recipe; its `download:` section is used.")
@click.option("--ray-address", default=None, help="Join an existing Ray cluster instead of a local one.")
@click.option("--quiet", is_flag=True, help="No summary.")
def download(
    inputs: tuple[str, ...],
    output: str,
    config: str | None,
    image_size: int | None,
    jpeg_quality: int,
    shard_size: int,
    ray_address: str | None,
    quiet: bool,
    **flags: Any,
) -> None:
    """Fetch the images of URL tables (Parquet, CSV, TSV, JSON lines) into WebDataset shards of
    img2dataset's layout (key.jpg, key.txt, key.json) plus a per-row and a per-URL Parquet table.

    Rerunning resumes: URLs with a result in OUTPUT/_work/download are not fetched again.
    """
    import json

    from mm1data.config import DownloadConfig, from_dict
    from mm1data.download.job import run_download
    from mm1data.report import StageLog

    recipe = load_recipe(config) if config else Recipe()
    given = {k: v for k, v in flags.items() if v is not None}
    cfg = from_dict(DownloadConfig, {**to_dict(recipe.download), **given, "enabled": True}, where="download")
    ray = dataclasses.replace(recipe.ray, address=ray_address or recipe.ray.address)
    stats = run_download(
        list(inputs),
        output,
        cfg,
        recipe.ingest,
        shard_size=shard_size,
        image_size=image_size,
        jpeg_quality=jpeg_quality,
        ray=ray,
        log=StageLog(quiet=quiet),
    )
    if not quiet:
        dl = stats["download"]
        click.echo(
            f"read {stats['read']}, kept {stats['kept']}, rejected {stats['rejected']}; "
            f"{dl['urls']} distinct URLs ({dl['fetched']} fetched now, {dl['reused']} from the checkpoint), "
            f"success {dl.get('success_rate', 0.0):.1%} in {stats['wall_s']:.1f} s"
        )
        for reason, n in stats["rejected_by_reason"].items():
            click.echo(f"  {reason:<32}{n:>10}")
        click.echo(json.dumps({"shards": len(stats["shards"]), "output": output}))


@main.command("plan")
@source_options
@build_options
@click.option("--output", default="./mm1data-plan", show_default=True, help="Output folder (local or s3://).")
@click.option(
    "--sample", "sample", type=float, default=None, help="Fraction of the records to run (default 0.1)."
)
@click.option("--sample-seed", type=int, default=None, help="Seed of the record sample (default 0).")
@click.option("--budget-tokens", type=float, default=None, help="Target tokens of the build, e.g. 100e9.")
@click.option("--budget-sequences", type=float, default=None, help="Target packed sequences of the build.")
@click.option("--nodes", type=int, default=None, help="Nodes the wall time is projected for (default 1).")
@click.option("--cores-per-node", type=int, default=None, help="Cores per node (default: this machine's).")
@click.option("--confidence", type=float, default=None, help="Of every interval (default 0.95).")
@click.option("--quiet", is_flag=True, help="No progress lines and no summary.")
@click.option("--log-json", is_flag=True, help="Progress as JSON lines on stderr; plan.json on stdout.")
def plan_cmd(output: str, quiet: bool, log_json: bool, **kw: Any) -> None:
    """Project a build from a seeded sample: yields, dedup loss, packed size, budget and cost.

    Takes the sources, recipe and build flags of `mm1data build`, reads every record, and runs
    filter, dedup, tokenize and plan (no shards) on a --sample of them; writes OUTPUT/plan.json
    and prints a summary. With no source flags and no --config, plans the bundled sample.
    """
    import json

    from mm1data.config import PlanConfig, from_dict
    from mm1data.plan.job import run_plan
    from mm1data.plan.summary import print_plan_summary

    names = (
        "sample",
        "sample_seed",
        "budget_tokens",
        "budget_sequences",
        "nodes",
        "cores_per_node",
        "confidence",
    )
    given = {k: kw.pop(k) for k in names}
    recipe = recipe_with_build_flags(kw)
    given = {k: v for k, v in given.items() if v is not None}
    cfg = from_dict(PlanConfig, {**to_dict(recipe.plan), **given}, where="plan")
    plan = run_plan(dataclasses.replace(recipe, plan=cfg), output, quiet=quiet, json_lines=log_json)
    if log_json:
        click.echo(json.dumps(plan))
    elif not quiet:
        print_plan_summary(plan)


@main.group()
def inspect() -> None:
    """Look inside packed shards and datasets."""


@inspect.command("shard")
@click.argument("path")
@click.option("--sample", "n_sample", type=int, default=0, help="Render the first N sequences as text.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--export-images", type=click.Path(), default=None, help="Write the shard's images to DIR.")
@click.option("--tokenizer", default=None, help="tokenizer.json for --sample (default: the bundled one).")
@click.option(
    "--html", "html_out", type=click.Path(), default=None, help="Write a self-contained page of the shard."
)
@click.option(
    "--max-sequences", type=int, default=32, show_default=True, help="Sequences on the --html page."
)
def inspect_shard(
    path: str,
    n_sample: int,
    as_json: bool,
    export_images: str | None,
    tokenizer: str | None,
    html_out: str | None,
    max_sequences: int,
) -> None:
    """Summarize one shard: sequences, fill, images, tokens per stream, and an integrity check of
    every sequence (exit code 1 when any invariant is broken)."""
    import json

    from mm1data.shards import inspect as si

    summary = si.shard_summary(path)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif summary.get("sequences"):
        ips = summary["images_per_sequence"]
        click.echo(f"shard      {summary['path']} ({summary['bytes'] / 1e6:.1f} MB)")
        click.echo(f"sequences  {summary['sequences']} × {summary['seq_len']} tokens")
        click.echo(f"fill       {summary['fill']:.2%}")
        per_seq = f"per sequence min {ips['min']}, mean {ips['mean']}, max {ips['max']}"
        click.echo(f"images     {summary['images']} ({per_seq})")
        for stream, n in summary["tokens"].items():
            click.echo(f"  {stream:<18} {n:>10} tokens {summary['examples'][stream]:>7} examples")
    if summary["ok"] and (n_sample or export_images or html_out):
        samples = si.read_shard_bytes(si.read_bytes(path))
        manifest = si.manifest_beside(path)
        contract = si.infer_contract(samples, manifest)
        if html_out:
            from mm1data.shards.html import shard_page
            from mm1data.tokens.tokenizer import TextTokenizer

            page = shard_page(
                path, samples, summary, manifest, TextTokenizer(tokenizer).decode, max_sequences
            )
            _write_page(html_out, page)
        if n_sample:
            from mm1data.tokens.tokenizer import TextTokenizer

            tok = TextTokenizer(tokenizer)
            markers = tuple(t for t in (contract.image_start, contract.image_end) if t is not None)
            for s in samples[:n_sample]:
                click.echo(f"\n════ sequence {s.key}")
                click.echo(si.render_sample(s, tok.decode, contract.image_size, contract.image, markers))
        if export_images:
            written = [p for s in samples for p in si.export_images(s, export_images)]
            click.echo(f"exported {len(written)} images to {export_images}")
    if not summary["ok"]:
        for line in summary["problems"][:50]:
            click.echo(f"BROKEN {line}", err=True)
        click.echo(f"integrity check FAILED: {len(summary['problems'])} problems in {path}", err=True)
        sys.exit(1)
    if not as_json:
        click.echo("integrity  ok (lengths, segments, positions, loss mask, slots and images, spans, sha256)")


@inspect.command("dataset")
@click.argument("path")
@click.option(
    "--verify", is_flag=True, help="Check every shard, .tar.idx and .nv-meta file (exit 1 on mismatch)."
)
@click.option("--html", "html_out", type=click.Path(), default=None, help="Also write a self-contained page.")
@click.option("--sample", "n_sample", type=int, default=8, show_default=True, help="Sequences on the page.")
@click.option("--tokenizer", default=None, help="tokenizer.json for --html (default: the bundled one).")
def inspect_dataset(
    path: str, verify: bool, html_out: str | None, n_sample: int, tokenizer: str | None
) -> None:
    """Show a dataset's manifest (local folder or s3:// prefix) as a table; --verify re-hashes every
    shard and checks the Energon files; --html writes a page with the mix, histograms and sequences."""
    import json

    from mm1data.shards.format import read_manifest
    from mm1data.shards.format import verify as verify_dataset

    m = read_manifest(path)
    rows = [
        ("format", f"{m.format} v{m.version}"),
        ("layout", f"seq_len {m.seq_len}, image_tokens {m.image_tokens}, max_images {m.max_images}"),
        ("images", f"{m.image_size}² JPEG q{m.jpeg_quality}"),
        ("tokenizer", f"{m.tokenizer.name} vocab {m.tokenizer.vocab_size} sha256 {m.tokenizer.sha256}"),
        ("special tokens", json.dumps(m.special_tokens)),
        ("mix target", f"{json.dumps(m.mix.target)} by {m.mix.unit}"),
        ("mix realized", json.dumps(m.mix.realized)),
        ("epochs", json.dumps(m.epochs)),
        ("partitions", str(m.partitions)),
        ("totals", json.dumps(m.totals.to_json())),
        ("mm1data", m.mm1data_version),
    ]
    for name, value in rows:
        click.echo(f"{name:<15} {value}")
    streams = sorted({k for s in m.shards for k in s.tokens})
    header = "".join(f"{s:>20}" for s in streams)
    click.echo(f"\n{'shard':<24}{'sequences':>10}{'images':>8}{'MB':>8}{header}   (tokens per stream)")
    for s in m.shards:
        tokens = "".join(f"{s.tokens.get(k, 0):>20}" for k in streams)
        click.echo(f"{s.path:<24}{s.sequences:>10}{s.images:>8}{s.bytes / 1e6:>8.1f}{tokens}")
    if html_out:
        from mm1data.shards.html import dataset_page
        from mm1data.tokens.tokenizer import TextTokenizer

        _write_page(html_out, dataset_page(path, m, TextTokenizer(tokenizer).decode, n_sample))
    if verify:
        problems = verify_dataset(path, manifest=m)
        for line in problems:
            click.echo(f"MISMATCH {line}", err=True)
        if problems:
            click.echo(f"verify FAILED: {len(problems)} problems in {len(m.shards)} shards", err=True)
            sys.exit(1)
        click.echo(f"verify ok: {len(m.shards)} shards match their sha256, size and .tar.idx; .nv-meta ok")


def _write_page(out: str, page: str) -> None:
    from pathlib import Path

    Path(out).write_text(page, encoding="utf-8")
    click.echo(f"wrote {out} ({len(page.encode()) / 1e6:.1f} MB, self-contained)")


@main.command()
@click.argument("src", type=click.Path())
@click.argument("dest")
@click.option(
    "--endpoint-url", default=None, help="S3-compatible endpoint (MinIO, R2); else $AWS_ENDPOINT_URL."
)
@click.option("--workers", type=int, default=8, show_default=True, help="Shards uploaded in parallel.")
def publish(src: str, dest: str, endpoint_url: str | None, workers: int) -> None:
    """Upload the local build SRC to DEST (s3://bucket/prefix), verified, manifest.json last.

    Each shard's size and sha256 are checked against the manifest after upload; rerunning a
    publish that died skips shards already stored with the right hash.
    """
    from mm1data.shards.publish import PublishError
    from mm1data.shards.publish import publish as run_publish

    def show(event: str, name: str) -> None:
        click.echo(f"{event:>8} {name}", err=True)

    try:
        report = run_publish(src, dest, endpoint_url=endpoint_url, workers=workers, progress=show)
    except PublishError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    uploaded, skipped = len(report.uploaded), len(report.skipped)
    size, secs = report.bytes_uploaded / 1e6, report.seconds
    click.echo(
        f"published {report.dest}: {uploaded} shards uploaded, {skipped} already there, "
        f"{size:.1f} MB in {secs:.1f}s ({report.mb_per_s:.1f} MB/s), all verified"
    )


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
