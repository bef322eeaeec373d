"""Defences against hostile input: tar member names that escape a folder, decompression bombs.

- :func:`safe_member_name` turns an archive member name into a clean relative POSIX path or
  raises :class:`UnsafeName` (with a snake_case ``reason``) for names that could escape or confuse;
- :func:`safe_join` joins such a name under a folder and proves the result stays inside it;
- :func:`open_image_limited` decodes an image with byte and pixel limits, raising ingest's
  :class:`~mm1data.ingest.base.BadImage` (same reasons as ingest's ``describe_image``:
  ``image_empty``, ``image_too_large``, ``decompression_bomb``, ``image_undecodable``).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

from PIL import Image

from mm1data.ingest.base import BadImage

__all__ = ["BadImage", "UnsafeName", "open_image_limited", "safe_join", "safe_member_name"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeName(ValueError):
    """An archive member name that is not a safe relative path; ``reason`` says why (snake_case)."""

    def __init__(self, reason: str, name: str) -> None:
        super().__init__(f"{reason}: {name!r}")
        self.reason = reason
        self.name = name


def safe_member_name(name: str) -> str:
    """A clean relative POSIX path for the archive member ``name``, or :class:`UnsafeName`.

    Backslashes count as separators (Windows-made archives), then ``.`` components, empty
    components and a leading ``./`` are dropped. Rejected, with these reasons: an empty result
    (``member_name_empty``), an absolute path or drive letter (``member_name_absolute``), any ``..``
    component (``member_name_parent``), control characters, NUL included (``member_name_control_char``).
    Never resolves ``..`` away: a name that tries to climb is refused, not repaired.
    """
    if not isinstance(name, str):
        raise UnsafeName("member_name_not_text", repr(name))
    if _CONTROL.search(name):
        raise UnsafeName("member_name_control_char", name)
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise UnsafeName("member_name_absolute", name)
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeName("member_name_parent", name)
    if not parts:
        raise UnsafeName("member_name_empty", name)
    return "/".join(parts)


def safe_join(root: str | os.PathLike[str], name: str) -> Path:
    """``root / safe_member_name(name)``, checked to resolve inside ``root`` (symlinks included)."""
    base = Path(root).resolve()
    target = (base / safe_member_name(name)).resolve()
    if not target.is_relative_to(base):
        raise UnsafeName("member_name_escapes_root", name)
    return target


def open_image_limited(data: bytes | None, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode an encoded image fully, refusing oversized inputs before decoding them.

    The byte limit is checked first, then the pixel count from the header (Pillow reads only the
    header on open), and only then the image is decoded. Raises :class:`BadImage` with reason
    ``image_empty``, ``image_too_large`` (bytes), ``decompression_bomb`` (pixels) or
    ``image_undecodable`` (corrupt, truncated, unknown format). Returns a loaded image.
    """
    if not data:
        raise BadImage("image_empty", "zero-byte image")
    if len(data) > max_bytes:
        raise BadImage("image_too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                img.close()
                raise BadImage("decompression_bomb", f"{width}x{height} pixels > {max_pixels}")
            img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("decompression_bomb", str(e)[:200]) from e
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt data
        raise BadImage("image_undecodable", f"{type(e).__name__}: {str(e)[:200]}") from e
    return img
