"""Typed, frozen config objects. YAML recipes in ``pipelines/`` load into :class:`Recipe`.

Every section is a frozen dataclass with defaults; a recipe only names what it changes. Unknown
keys and wrong types fail fast with a :class:`~mm1data.errors.UsageError` naming the key.
YAML is read with ``yaml.safe_load``: a recipe cannot execute code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mm1data.errors import UsageError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RECIPE = REPO_ROOT / "pipelines" / "sample.yaml"


@dataclass(frozen=True)
class SourceSpec:
    """One input: a path or glob (local or ``s3://``) and its format (``auto`` detects it).

    Relative paths in a recipe are resolved against the recipe's folder.
    """

    path: str
    format: str = "auto"
    images: str | None = None  # image folder for COCO json and MMC4 jsonl sources
    name: str | None = None  # dataset name recorded on text docs (e.g. "c4")


@dataclass(frozen=True)
class Sources:
    """Inputs per kind. Synthetic captions are joined onto caption pairs."""

    captions: tuple[SourceSpec, ...] = ()
    interleaved: tuple[SourceSpec, ...] = ()
    text: tuple[SourceSpec, ...] = ()
    synthetic_captions: tuple[SourceSpec, ...] = ()

    def is_empty(self) -> bool:
        """True when no source of any kind is given."""
        return not (self.captions or self.interleaved or self.text or self.synthetic_captions)


@dataclass(frozen=True)
class IngestConfig:
    """Limits applied while reading raw records."""

    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 89_478_485  # Pillow's own decompression-bomb threshold
    max_text_chars: int = 1_000_000  # a caption or text item longer than this is rejected
    max_caption_chars: int = 4_096
    rows_per_batch: int = 256


@dataclass(frozen=True)
class RayConfig:
    """Where to run: ``address`` None starts a local Ray sized to the machine."""

    address: str | None = None
    num_cpus: int | None = None


@dataclass(frozen=True)
class Recipe:
    """A whole job description, loaded from YAML (see ``pipelines/``)."""

    sources: Sources = field(default_factory=Sources)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and tp is SourceSpec:
            value = {"path": value}
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise UsageError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "recipe") -> T:
    """Build dataclass ``cls`` from a plain dict, checking keys and types recursively."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UsageError(f"{where}: {e}") from e


def _resolve_paths(sources: Sources, base: Path) -> Sources:
    def fix(spec: SourceSpec) -> SourceSpec:
        def abs_(p: str | None) -> str | None:
            if p is None or "://" in p or Path(p).is_absolute():
                return p
            return str((base / p).resolve())

        return dataclasses.replace(spec, path=abs_(spec.path), images=abs_(spec.images))

    return Sources(
        **{f.name: tuple(fix(s) for s in getattr(sources, f.name)) for f in dataclasses.fields(Sources)}
    )


def load_recipe(path: str | Path) -> Recipe:
    """Load a YAML recipe into a :class:`Recipe`; relative source paths resolve beside the file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} must be a mapping at the top level")
    recipe = from_dict(Recipe, data, where=p.name)
    return dataclasses.replace(recipe, sources=_resolve_paths(recipe.sources, p.parent))


def to_dict(obj: Any) -> Any:
    """A config object as plain JSON-able data (for manifests and stats)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
