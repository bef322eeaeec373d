"""Megatron-Energon metadata, so ``get_train_dataset(path, ...)`` loads a packed dataset as it is.

Energon reads a prepared WebDataset through ``<root>/.nv-meta/``: ``dataset.yaml`` (here a crude
dataset: samples reach the user's cooker as dicts, see :mod:`mm1data.shards.energon_cook`),
``split.yaml`` (every shard in the ``train`` split) and ``.info.json`` (samples per shard), plus a
``<shard>.tar.idx`` beside each tar (sample offsets; :func:`mm1data.shards.format.pack_tar_index`,
written by the shard writer). This module writes the ``.nv-meta`` files from an iterator of
``(shard path, samples)`` in one pass (memory does not grow with the number of shards) and checks
them. It does not import Energon: the files are plain YAML and JSON.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import IO, Any

from mm1data.shards.format import FORMAT, Manifest, atomic_write, parse_shard_name, shard_range

NV_META = ".nv-meta"
DATASET_YAML = "dataset.yaml"
SPLIT_YAML = "split.yaml"
INFO_JSON = ".info.json"
SPLIT = "train"
SUBFLAVORS = {"mm1data_format": FORMAT}
"""Subflavors every sample carries in Energon, so a ``Cooker(..., has_subflavors=SUBFLAVORS)`` picks it."""

DATASET_YAML_TEXT = "__module__: megatron.energon\n__class__: CrudeWebdataset\nsubflavors:\n" + "".join(
    f"  {k}: {v}\n" for k, v in SUBFLAVORS.items()
)


def metadata_paths() -> tuple[str, ...]:
    """The ``.nv-meta`` files relative to the dataset root, in the order they are written."""
    return tuple(f"{NV_META}/{n}" for n in (DATASET_YAML, INFO_JSON, SPLIT_YAML))


class _SplitRuns:
    """Writes ``split.yaml``'s shard list as brace ranges of consecutive shards of one partition
    (``shard-00003-{00000..00411}.tar``), as ``energon prepare`` collapses it: O(partitions) lines."""

    def __init__(self, f: IO[str]) -> None:
        self.f = f
        self.run: tuple[int, int, int] | None = None  # (part, first, last)

    def _flush(self) -> None:
        if self.run:
            self.f.write(f"  - '{shard_range(*self.run)}'\n")
        self.run = None

    def add(self, path: str) -> None:
        parsed = parse_shard_name(path) if "/" not in path else None
        if parsed and self.run and parsed[0] == self.run[0] and parsed[1] == self.run[2] + 1:
            self.run = (self.run[0], self.run[1], parsed[1])
            return
        self._flush()
        if parsed:
            self.run = (parsed[0], parsed[1], parsed[1])
        else:
            self.f.write(f"  - {json.dumps(path)}\n")

    def close(self) -> None:
        self._flush()


def write_energon_streams(info: IO[str], split: IO[str], shards: Iterable[tuple[str, int]]) -> int:
    """Write ``.info.json`` (``{"shard_counts": {path: samples}}``) and ``split.yaml`` to two text
    streams in one pass over ``shards`` (sorted by path, as in the manifest); returns the shard count."""
    info.write('{\n  "shard_counts": {')
    split.write(f"split_parts:\n  {SPLIT}:\n")
    runs = _SplitRuns(split)
    n = 0
    for path, samples in shards:
        info.write(f"{',' if n else ''}\n    {json.dumps(path)}: {int(samples)}")
        runs.add(path)
        n += 1
    runs.close()
    info.write("\n  }\n}" if n else "}\n}")
    split.write("exclude: []\n")
    return n


def write_energon_metadata(output: str, shards: Iterable[tuple[str, int]]) -> int:
    """Write ``output/.nv-meta/{dataset.yaml,.info.json,split.yaml}`` (local or ``s3://``), each
    atomically, from ``(shard path, samples)`` pairs sorted by path, in one pass. Call it after the
    shards and before ``manifest.json``. Returns the number of shards."""
    root = output.rstrip("/")
    with atomic_write(f"{root}/{NV_META}/{DATASET_YAML}") as f:
        f.write(DATASET_YAML_TEXT.encode())
    with (
        atomic_write(f"{root}/{NV_META}/{INFO_JSON}") as info_raw,
        atomic_write(f"{root}/{NV_META}/{SPLIT_YAML}") as split_raw,
    ):
        info = io.TextIOWrapper(info_raw, encoding="utf-8", newline="\n")
        split = io.TextIOWrapper(split_raw, encoding="utf-8", newline="\n")
        n = write_energon_streams(info, split, shards)
        for t in (info, split):
            t.flush()
            t.detach()
    return n


def energon_metadata(manifest: Manifest) -> dict[str, bytes]:
    """The exact bytes of each ``.nv-meta`` file for ``manifest`` (path relative to the root → bytes)."""
    info, split = io.StringIO(), io.StringIO()
    write_energon_streams(info, split, ((e.path, e.sequences) for e in manifest.shards))
    texts = (DATASET_YAML_TEXT, info.getvalue(), split.getvalue())
    return dict(zip(metadata_paths(), (t.encode() for t in texts), strict=True))


def verify_energon_metadata(fs: Any, root: str, manifest: Manifest) -> list[str]:
    """Problems with the stored ``.nv-meta`` files of the dataset at ``root`` (inside ``fs``)."""
    problems = []
    for name, want in energon_metadata(manifest).items():
        try:
            got = fs.cat_file(f"{root}/{name}")
        except FileNotFoundError:
            problems.append(f"{name}: missing")
            continue
        if got != want:
            problems.append(f"{name}: differs from what the manifest gives")
    return problems
