"""Hostile names and images: member names that climb out of a folder, decompression bombs, corrupt bytes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from mm1data.io.safety import BadImage, UnsafeName, open_image_limited, safe_join, safe_member_name


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("000001.jpg", "000001.jpg"),
        ("dir/sub/000001.tokens.npy", "dir/sub/000001.tokens.npy"),
        ("./a//b/./c.jpg", "a/b/c.jpg"),
        ("win\\made\\x.jpg", "win/made/x.jpg"),
        ("naïve café.jpg", "naïve café.jpg"),
    ],
)
def test_safe_member_names_are_returned_clean(name, clean):
    assert safe_member_name(name) == clean


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/passwd", "member_name_absolute"),
        ("\\\\server\\share\\x", "member_name_absolute"),
        ("C:\\Windows\\x.jpg", "member_name_absolute"),
        ("c:x.jpg", "member_name_absolute"),
        ("../x.jpg", "member_name_parent"),
        ("a/../../x.jpg", "member_name_parent"),
        ("a/b/..", "member_name_parent"),
        ("..\\..\\x.jpg", "member_name_parent"),
        ("a\x00.jpg", "member_name_control_char"),
        ("a\nb.jpg", "member_name_control_char"),
        ("a\x1b[31m.jpg", "member_name_control_char"),
        ("", "member_name_empty"),
        ("./", "member_name_empty"),
        (b"bytes.jpg", "member_name_not_text"),
    ],
)
def test_unsafe_member_names_are_refused_with_a_reason(name, reason):
    with pytest.raises(UnsafeName) as err:
        safe_member_name(name)
    assert err.value.reason == reason


def test_safe_join_stays_inside_root_even_through_a_symlink(tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    assert safe_join(root, "a/b.jpg") == (root / "a/b.jpg").resolve()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafeName) as err:
        safe_join(root, "link/x.jpg")
    assert err.value.reason == "member_name_escapes_root"
    with pytest.raises(UnsafeName, match="member_name_parent"):
        safe_join(root, "../x.jpg")


def coco_jpeg(shared: Path) -> bytes:
    return sorted((shared / "a-coco-mini/val2017").glob("*.jpg"))[0].read_bytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels: the shape of a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_real_jpeg_within_limits_decodes(shared_data):
    data = coco_jpeg(shared_data)
    img = open_image_limited(data, max_bytes=len(data), max_pixels=640 * 640)
    assert img.format == "JPEG" and img.size[0] * img.size[1] <= 640 * 640
    assert img.getpixel((0, 0)) is not None  # loaded


@pytest.mark.parametrize(
    ("make", "max_bytes", "max_pixels", "reason"),
    [
        (lambda j: b"", 10**8, 10**8, "image_empty"),
        (lambda j: j, 1000, 10**8, "image_too_large"),
        (lambda j: j, 10**8, 100 * 100, "decompression_bomb"),
        (lambda j: png_header_only(50_000, 50_000), 10**8, 10**8, "decompression_bomb"),
        (lambda j: png_header_only(12_000, 12_000), 10**8, 10**9, "decompression_bomb"),  # Pillow's own cap
        (lambda j: j[: len(j) // 2], 10**8, 10**8, "image_undecodable"),
        (lambda j: j[:2] + bytes(b ^ 0x5A for b in j[2:400]) + j[400:], 10**8, 10**8, "image_undecodable"),
        (lambda j: b"GIF89a not really" * 10, 10**8, 10**8, "image_undecodable"),
    ],
    ids=[
        "empty",
        "too_many_bytes",
        "too_many_pixels",
        "bomb_header",
        "above_pillow_cap",
        "truncated",
        "scrambled_header",
        "garbage",
    ],
)
def test_bad_images_raise_the_reason_readers_reject_with(shared_data, make, max_bytes, max_pixels, reason):
    with pytest.raises(BadImage) as err:
        open_image_limited(make(coco_jpeg(shared_data)), max_bytes=max_bytes, max_pixels=max_pixels)
    assert err.value.reason == reason
