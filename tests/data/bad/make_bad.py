"""Regenerate the bad-input corpus in this folder (committed; run only to change it).

Every file is small; each holds records that must become rejects with a specific reason.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent


def _jpeg() -> bytes:
    img = Image.new("RGB", (320, 240))
    for x in range(0, 320, 8):
        for y in range(0, 240, 8):
            img.putpixel((x, y), (x % 256, y % 256, (x * y) % 256))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid-header 1-bit PNG claiming 1.6 G pixels in a few KB."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * 64, 9)  # far fewer rows than claimed: never decoded anyway
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def main() -> None:
    """Write the corpus files."""
    jpeg, png = _jpeg(), _png()
    corrupt_png = bytearray(png)
    corrupt_png[40:60] = b"\xff" * 20  # inside IDAT: zlib / CRC failure
    samples = {
        "good": {"jpg": jpeg, "txt": b"a colourful test pattern on black"},
        "truncated_jpeg": {"jpg": jpeg[: len(jpeg) // 2], "txt": b"half a picture"},
        "corrupt_jpeg": {"jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "txt": b"noise"},
        "truncated_png": {"png": png[: len(png) // 2], "txt": b"half a png"},
        "corrupt_png": {"png": bytes(corrupt_png), "txt": b"bad crc"},
        "zero_byte": {"jpg": b"", "txt": b"nothing here"},
        "bomb": {"png": _bomb_png(), "txt": b"decompression bomb"},
        "huge_caption": {"jpg": jpeg, "txt": b"word " * 200_000},
        "bad_utf8_caption": {"jpg": jpeg, "txt": b"caf\xe9 au lait"},
        "bad_json": {"jpg": jpeg, "txt": b"ok caption", "json": b"{not json"},
        "no_image_no_url": {"txt": b"a caption with no picture"},
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
    (HERE / "captions.tar").write_bytes(buf.getvalue())
    whole = buf.getvalue()
    (HERE / "truncated.tar").write_bytes(whole[: int(len(whole) * 0.6)])

    lines = [
        json.dumps({"id": "ok", "text": "A perfectly fine document about gardening in spring."}).encode(),
        b'{"id": "latin1", "text": "caf\xe9"}',
        b"this line is not json",
        json.dumps({"id": "no_text", "url": "http://example.com"}).encode(),
        json.dumps({"id": "empty", "text": "   "}).encode(),
        json.dumps({"id": "huge", "text": "x" * 1_100_000}).encode(),
        json.dumps({"id": "not_a_string", "text": 42}).encode(),
        b"[1, 2, 3]",
    ]
    (HERE / "text.jsonl").write_bytes(b"\n".join(lines) + b"\n")


if __name__ == "__main__":
    main()
