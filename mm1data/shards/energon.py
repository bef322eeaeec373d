"""Megatron-Energon metadata, so ``get_train_dataset(path, ...)`` loads a packed dataset as it is.

Energon reads a prepared WebDataset through ``<root>/.nv-meta/``: ``dataset.yaml`` (here a crude
dataset: samples reach the user's cooker as dicts, see :mod:`mm1data.shards.energon_cook`),
``split.yaml`` (every shard in the ``train`` split) and ``.info.json`` (samples per shard), plus a
``<shard>.tar.idx`` beside each tar (sample offsets; :func:`mm1data.shards.format.pack_tar_index`,
written by the shard writer). :class:`EnergonMetadata` writes the ``.nv-meta`` files as shards
arrive (memory does not grow with the number of shards; :func:`mm1data.shards.writer.finish_dataset`
feeds it in the same pass that writes ``manifest.json``), and :func:`verify_energon_metadata`
checks them. It does not import Energon: the files are plain YAML and JSON.
"""

from __future__ import annotations

import contextlib
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


class EnergonStreams:
    """Writes ``.info.json`` (``{"shard_counts": {path: samples}}``) and ``split.yaml`` to two text
    streams as shards arrive (sorted by path, as in the manifest): memory does not grow with them."""

    def __init__(self, info: IO[str], split: IO[str]) -> None:
        self.info, self.runs, self.n = info, _SplitRuns(split), 0
        info.write('{\n  "shard_counts": {')
        split.write(f"split_parts:\n  {SPLIT}:\n")

    def add(self, path: str, samples: int) -> None:
        """One more shard."""
        self.info.write(f"{',' if self.n else ''}\n    {json.dumps(path)}: {int(samples)}")
        self.runs.add(path)
        self.n += 1

    def close(self) -> int:
        """Finish both files; returns the number of shards."""
        self.runs.close()
        self.info.write("\n  }\n}" if self.n else "}\n}")
        self.runs.f.write("exclude: []\n")
        return self.n


def write_energon_streams(info: IO[str], split: IO[str], shards: Iterable[tuple[str, int]]) -> int:
    """:class:`EnergonStreams` over ``(shard path, samples)`` pairs; returns the shard count."""
    streams = EnergonStreams(info, split)
    for path, samples in shards:
        streams.add(path, samples)
    return streams.close()


class EnergonMetadata(contextlib.AbstractContextManager):
    """``output/.nv-meta/{dataset.yaml,.info.json,split.yaml}`` (local or ``s3://``), written as shards
    arrive (:meth:`add`) and each committed atomically when the block ends without an error."""

    def __init__(self, output: str) -> None:
        self.root = output.rstrip("/")
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> EnergonMetadata:
        files = [self._stack.enter_context(atomic_write(f"{self.root}/{p}")) for p in metadata_paths()]
        self._texts = [io.TextIOWrapper(f, encoding="utf-8", newline="\n") for f in files]
        self._texts[0].write(DATASET_YAML_TEXT)
        self._streams = EnergonStreams(self._texts[1], self._texts[2])
        return self

    def add(self, path: str, samples: int) -> None:
        """One more shard (in path order)."""
        self._streams.add(path, samples)

    def __exit__(self, *exc: Any) -> bool | None:
        if exc[0] is None:
            self._streams.close()
            for t in self._texts:
                t.flush()
                t.detach()
        return self._stack.__exit__(*exc)


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
