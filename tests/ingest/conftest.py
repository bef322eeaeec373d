"""Helpers for reader tests: run a reader on one unit and collect its rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm1data.config import IngestConfig
from mm1data.ingest import read_unit
from mm1data.ingest.base import Unit

BAD = Path(__file__).resolve().parent.parent / "data" / "bad"


def read_rows(
    stream: str, fmt: str, path: Path | str, images: str | None = None, name: str | None = None
) -> list[dict]:
    """All rows a reader yields for one file, as dicts."""
    unit = Unit(stream=stream, format=fmt, path=str(path), images=images, name=name)
    return [row for table in read_unit(unit, IngestConfig()) for row in table.to_pylist()]


def reasons(rows: list[dict]) -> dict[str, str | None]:
    """id -> reject reason (None when kept)."""
    return {r["id"]: (r["reject"] or {}).get("reason") for r in rows}


@pytest.fixture(scope="session")
def bad_dir() -> Path:
    """tests/data/bad: the hand-made bad-input corpus."""
    return BAD
