"""A real HTTP server on 127.0.0.1 for download tests and benchmarks (aiohttp.web in a thread).

It serves real JPEGs under ``/img/<name>`` and plants the failure cases of issue 11 under their
own paths. It counts *served* responses per path (a request cut off by a dying client is not
served), and can hold every new request (``hold_after``) to freeze a download mid-way.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections import Counter

from aiohttp import web

HTML = b"<!DOCTYPE html><html><head><title>Not found</title></head><body>gone</body></html>"


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A valid-header 1-bit PNG claiming 1.6 G pixels in a few KB."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    idat = zlib.compress((b"\x00" + b"\x00" * ((width + 7) // 8)) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class ImageServer:
    """``with ImageServer(images) as srv: srv.url("img/x.jpg")``.

    Paths: ``img/<name>`` 200 image; ``404/<name>``, ``403/<name>``; ``flaky500/<name>`` 500 on
    the first request, then the image; ``429/<name>`` 429 with ``Retry-After: 1`` first;
    ``slow/<name>`` answers after ``slow_s``; ``noai/<name>`` (``X-Robots-Tag: noai``);
    ``otherbot/<name>`` (``X-Robots-Tag: otherbot: noindex``); ``html/<name>`` an HTML page as
    ``image/jpeg``; ``truncated/<name>`` the first half of the JPEG; ``bomb.png``;
    ``loop/<n>`` redirects forever; ``redirect/<name>`` 302 to ``img/<name>``; ``huge`` a
    chunked body of ``huge_bytes``; ``robots.txt`` from ``robots``.
    """

    def __init__(
        self,
        images: dict[str, bytes],
        slow_s: float = 3.0,
        huge_bytes: int = 3 * 1024 * 1024,
        robots: str | None = None,
    ) -> None:
        self.images = images
        self.slow_s = slow_s
        self.huge_bytes = huge_bytes
        self.robots = robots
        self.served: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}
        self.hold_after: int | None = None
        self.held: dict[int, web.Request] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self._release: asyncio.Event | None = None

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}/{path}"

    def __enter__(self) -> ImageServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def hold(self, after: int) -> None:
        """Answer only the next ``after`` requests; hold the ones after them until :meth:`release`."""
        self.hold_after = sum(self.received.values()) + after

    def held_open(self) -> int:
        """How many held requests still have a live client connection."""
        held = list(self.held.values())
        return sum(1 for r in held if r.transport is not None and not r.transport.is_closing())

    def release(self) -> None:
        """Stop holding requests."""
        self.hold_after = None
        if self._release is not None:
            self.loop.call_soon_threadsafe(self._release.set)

    def reset_counts(self) -> None:
        """Forget what was served (planted first-request failures fail again)."""
        self.served.clear()
        self.received.clear()
        self.times.clear()

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        earlier = sum(self.received.values())
        self.received[path] += 1
        self.times.setdefault(path, []).append(asyncio.get_running_loop().time())
        if self.hold_after is not None and earlier >= self.hold_after:
            self.held[id(request)] = request
            await self._release.wait()
            self.held.pop(id(request), None)
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the client went away while held")  # never served
        response = await self._answer(request, path, self.received[path])
        self.served[path] += 1
        return response

    async def _answer(self, request: web.Request, path: str, nth: int) -> web.StreamResponse:
        kind, _, name = path.partition("/")
        image = self.images.get(name)
        jpeg = {"Content-Type": "image/jpeg"}
        if kind == "robots.txt":
            if self.robots is None:
                return web.Response(status=404)
            return web.Response(text=self.robots)
        if kind == "bomb.png":
            return web.Response(body=bomb_png(), content_type="image/png")
        if kind == "loop":
            return web.Response(status=302, headers={"Location": f"/loop/{int(name or 0) + 1}"})
        if kind == "huge":
            resp = web.StreamResponse(headers=jpeg)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            block = b"\xff" * 65536
            for _ in range(self.huge_bytes // len(block)):
                await resp.write(block)
            await resp.write_eof()
            return resp
        if kind == "404":
            return web.Response(status=404, text="not found")
        if kind == "403":
            return web.Response(status=403, text="forbidden")
        if kind == "redirect":
            return web.Response(status=302, headers={"Location": f"/img/{name}"})
        if image is None:
            return web.Response(status=404, text="no such image")
        if kind == "img":
            return web.Response(body=image, headers=jpeg)
        if kind == "flaky500":
            return web.Response(status=500) if nth == 1 else web.Response(body=image, headers=jpeg)
        if kind == "429":
            if nth == 1:
                return web.Response(status=429, headers={"Retry-After": "1"})
            return web.Response(body=image, headers=jpeg)
        if kind == "slow":
            await asyncio.sleep(self.slow_s)
            return web.Response(body=image, headers=jpeg)
        if kind == "noai":
            return web.Response(body=image, headers={**jpeg, "X-Robots-Tag": "noai"})
        if kind == "otherbot":
            return web.Response(body=image, headers={**jpeg, "X-Robots-Tag": "otherbot: noindex"})
        if kind == "html":
            return web.Response(body=HTML, headers=jpeg)
        if kind == "truncated":
            return web.Response(body=image[: len(image) // 2], headers=jpeg)
        return web.Response(status=404)
