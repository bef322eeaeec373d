"""The network part of the download phase: fetch many URLs at once with aiohttp, politely.

One :class:`Client` per worker process: an aiohttp session whose connection pool and DNS cache
live across batches. Per request: a cap on requests in flight per worker and per host, connect
and total timeouts, a body-size cap, redirects up to a limit, retries with exponential backoff and
jitter on connection errors, timeouts, 408, 429 and 5xx (``Retry-After`` honoured), and the
opt-outs: ``X-Robots-Tag`` directives (img2dataset's ``disallowed_header_directives``, also when
scoped to our user-agent token) and, when asked, robots.txt (RFC 9309) cached per origin.

DNS answers are cached per host, *failures included*: a dead host costs one lookup however many
of its URLs a worker sees, so a table of unreachable URLs fails fast instead of waiting out a
timeout per URL. Every outcome is a :class:`Fetched` with a normalised ``reason`` (``None`` when
the body was read): ``dns``, ``connect``, ``timeout``, ``ssl``, ``disconnected``,
``incomplete_body``, ``invalid_url``, ``http_404``, ``http_429``, ``http_4xx``, ``http_5xx``,
``http_3xx``, ``too_many_redirects``, ``x_robots_tag``, ``robots_txt``, ``too_large``,
``blocked_address``.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import functools
import ipaddress
import os
import random
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from mm1data import __version__
from mm1data.config import DownloadConfig

RETRYABLE_STATUS = frozenset({408, 429})
# X-Robots-Tag directives that carry a colon themselves (not a user-agent scope)
COLON_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
CHUNK = 1 << 20  # read as much of a body as has arrived (the cap is checked per chunk)
ACCEPT = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"


@dataclass
class Fetched:
    """The outcome of fetching one URL: the body, or why there is none."""

    url: str
    data: bytes | None = None
    reason: str | None = None
    detail: str | None = None
    http_status: int | None = None
    retryable: bool = False
    attempts: int = 0
    seconds: float = 0.0


class Failure(Exception):
    """One failed attempt, with its normalised reason."""

    def __init__(
        self,
        reason: str,
        detail: str,
        retryable: bool,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail[:300]
        self.retryable = retryable
        self.http_status = http_status
        self.retry_after = retry_after


class BlockedAddress(OSError):
    """A connection to an address outside ``download.allow_networks``."""


def guarded_socket_factory(networks: tuple[str, ...]):
    """An aiohttp ``socket_factory`` that refuses addresses outside ``networks``."""
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]

    def factory(addr_info: tuple) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        ip = ipaddress.ip_address(sockaddr[0])
        if not any(ip in net for net in nets):
            raise BlockedAddress(errno.EACCES, f"{ip} is outside download.allow_networks")
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


class DnsFailure(OSError):
    """A failed lookup; ``temporary`` failures (timeouts, SERVFAIL) may be retried."""

    def __init__(self, message: str, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


def user_agent(cfg: DownloadConfig) -> str:
    """The User-Agent header: names mm1data and the configured token."""
    token = cfg.user_agent_token
    extra = "" if token == "mm1data" else f"; {token}"
    return f"Mozilla/5.0 (compatible; mm1data/{__version__}{extra}; +https://pypi.org/project/mm1data/)"


def status_reason(status: int) -> str:
    """The reason for a non-2xx final status."""
    if status in (404, 429):
        return f"http_{status}"
    return f"http_{status // 100}xx"


def status_retryable(status: int) -> bool:
    """Retry on 408, 429 and 5xx only."""
    return status in RETRYABLE_STATUS or 500 <= status < 600


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def robots_tag_block(values: list[str], token: str, disallowed: frozenset[str]) -> str | None:
    """The ``X-Robots-Tag`` value that forbids us, or None. A value may be scoped to a user agent
    (``otherbot: noindex``): only unscoped values and those scoped to ``token`` count."""
    for value in values:
        head, sep, rest = value.partition(":")
        scope = head.strip().lower() if sep and head.strip().lower() not in COLON_DIRECTIVES else None
        body = rest if scope is not None else value
        if scope is not None and scope != token.lower():
            continue
        if {d.strip().lower() for d in body.split(",")} & disallowed:
            return value.strip()
    return None


def ssl_context() -> ssl.SSLContext:
    """A verifying TLS context that honours ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` and the CA bundle
    variables of requests and curl (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``); one per process
    and setting (loading the CA bundle costs more than many fetches)."""
    env = os.environ
    cafile = env.get("SSL_CERT_FILE") or env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE")
    return _context(cafile or None, env.get("SSL_CERT_DIR") or None)


@functools.lru_cache(maxsize=4)
def _context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile, capath=capath)


def _dns_temporary(error: BaseException) -> bool:
    """Whether a lookup error may go away (timeout, SERVFAIL, refused) rather than "no such name"."""
    cause = error.__cause__ or error
    if isinstance(cause, socket.gaierror):
        return cause.errno not in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
    code = cause.args[0] if getattr(cause, "args", None) else None
    if type(cause).__name__ == "DNSError" and isinstance(code, int):
        return code not in (1, 4)  # ARES_ENODATA, ARES_ENOTFOUND
    return True


class CachingResolver(AbstractResolver):
    """Wraps a resolver: one lookup per host (concurrent callers share it), with a timeout;
    permanent failures and answers are cached for ``ttl_s``, temporary failures are not."""

    def __init__(self, inner: AbstractResolver, timeout_s: float, ttl_s: float = 600.0) -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.cache: dict[tuple, tuple[float, asyncio.Future]] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        key = (host, family)  # (the port is no part of the lookup: http and https share it)
        now = time.monotonic()
        hit = self.cache.get(key)
        if hit is None or now - hit[0] > self.ttl_s:
            if len(self.cache) >= 100_000:
                self.cache.clear()
            hit = (now, asyncio.ensure_future(self._lookup(host, port, family)))
            self.cache[key] = hit
        try:
            return [{**r, "port": port} for r in await asyncio.shield(hit[1])]
        except DnsFailure as e:
            if e.temporary and self.cache.get(key) is hit:
                del self.cache[key]
            raise

    async def _lookup(self, host: str, port: int, family: socket.AddressFamily) -> list[ResolveResult]:
        try:
            return await asyncio.wait_for(self.inner.resolve(host, port, family), self.timeout_s)
        except asyncio.TimeoutError as e:
            raise DnsFailure(f"no DNS answer for {host} in {self.timeout_s:g}s", temporary=True) from e
        except OSError as e:
            raise DnsFailure(f"{host}: {e.strerror or e}", temporary=_dns_temporary(e)) from e

    async def close(self) -> None:
        for _, future in self.cache.values():
            future.cancel()
        await self.inner.close()


def make_resolver(cfg: DownloadConfig) -> AbstractResolver:
    """aiodns (c-ares, truly asynchronous) when installed, else threads; ``cfg.dns_servers``
    replaces the system's name servers."""
    try:
        import aiodns  # noqa: F401

        kwargs = {"nameservers": list(cfg.dns_servers)} if cfg.dns_servers else {}
        inner: AbstractResolver = aiohttp.AsyncResolver(timeout=cfg.dns_timeout_s, tries=1, **kwargs)
    except ImportError:
        inner = aiohttp.ThreadedResolver()
    return CachingResolver(inner, cfg.dns_timeout_s)


class Client:
    """Fetches URLs for one worker. Use inside a running event loop: ``await client.fetch(url)``;
    ``await client.close()`` at the end."""

    def __init__(self, cfg: DownloadConfig, seed: int | None = None) -> None:
        self.cfg = cfg
        self.session: aiohttp.ClientSession | None = None
        self.in_flight = asyncio.Semaphore(cfg.concurrency)
        self.hosts: dict[str, asyncio.Semaphore] = {}
        self.robots: dict[str, asyncio.Future] = {}
        self.disallowed = frozenset(d.lower() for d in cfg.disallowed_header_directives)
        self.random = random.Random(seed)

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            cfg = self.cfg
            connector = aiohttp.TCPConnector(
                limit=cfg.concurrency,
                limit_per_host=0,  # per-host limits are ours (waiting for a slot is not a timeout)
                resolver=make_resolver(cfg),
                use_dns_cache=False,  # CachingResolver caches, failures included
                ssl=ssl_context(),
                socket_factory=guarded_socket_factory(cfg.allow_networks) if cfg.allow_networks else None,
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s, sock_connect=cfg.connect_timeout_s),
                headers={"User-Agent": user_agent(cfg), "Accept": ACCEPT},
                trust_env=True,  # HTTP(S)_PROXY, NO_PROXY, .netrc
                cookie_jar=aiohttp.DummyCookieJar(),  # image fetches need no cookies
            )
        return self.session

    async def close(self) -> None:
        """Close the connection pool."""
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def fetch(self, url: str) -> Fetched:
        """Fetch ``url`` with retries; never raises for network or HTTP trouble."""
        cfg = self.cfg
        start = time.perf_counter()
        out = Fetched(url=url)
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            if parts.scheme.lower() not in ("http", "https") or not host:
                raise Failure("invalid_url", f"not an absolute http(s) URL: {url[:200]}", False)
            if cfg.robots_txt:
                await self._check_robots(parts.scheme.lower(), parts.netloc.lower(), url)
        except Failure as f:
            out.reason, out.detail, out.retryable = f.reason, f.detail, f.retryable
            out.seconds = time.perf_counter() - start
            return out
        except ValueError as e:
            out.reason, out.detail = "invalid_url", f"{e}: {url[:200]}"
            return out
        gate = self.hosts.setdefault(host, asyncio.Semaphore(cfg.per_host))
        for attempt in range(1, cfg.retries + 2):
            out.attempts = attempt
            try:
                async with gate, self.in_flight:
                    out.data, out.http_status = await self._attempt(url)
                out.reason = out.detail = None
                out.retryable = False
                break
            except Failure as f:
                out.reason, out.detail, out.retryable = f.reason, f.detail, f.retryable
                out.http_status = f.http_status
                if not f.retryable or attempt > cfg.retries:
                    break
                if f.retry_after is not None and f.retry_after > cfg.max_retry_after_s:
                    out.detail = f"{f.detail} (Retry-After {f.retry_after:g}s > {cfg.max_retry_after_s:g}s)"
                    break
                await asyncio.sleep(self._delay(attempt, f.retry_after))
        out.seconds = time.perf_counter() - start
        return out

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (half fixed, half random), or the server's Retry-After."""
        if retry_after is not None:
            return retry_after
        cap = min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2 ** (attempt - 1))
        return cap / 2 + self.random.uniform(0, cap / 2)

    async def _attempt(self, url: str) -> tuple[bytes, int]:
        """One GET: the body and status, or :class:`Failure`."""
        cfg = self.cfg
        try:
            async with self._session().get(url, max_redirects=cfg.max_redirects) as resp:
                status = resp.status
                blocked = robots_tag_block(
                    resp.headers.getall("X-Robots-Tag", []), cfg.user_agent_token, self.disallowed
                )
                if blocked is not None:
                    raise Failure("x_robots_tag", f"X-Robots-Tag: {blocked}", False, status)
                if not 200 <= status < 300:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    detail = f"HTTP {status} {resp.reason or ''}".strip()
                    raise Failure(
                        status_reason(status), detail, status_retryable(status), status, retry_after
                    )
                if resp.content_length is not None and resp.content_length > cfg.max_bytes:
                    raise Failure(
                        "too_large", f"Content-Length {resp.content_length} > {cfg.max_bytes}", False
                    )
                chunks, size = [], 0
                async for chunk in resp.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > cfg.max_bytes:
                        raise Failure("too_large", f"body over {cfg.max_bytes} bytes", False, status)
                    chunks.append(chunk)
                return b"".join(chunks), status
        except Failure:
            raise
        except aiohttp.TooManyRedirects as e:
            raise Failure("too_many_redirects", f"more than {cfg.max_redirects} redirects", False) from e
        except aiohttp.ClientConnectorDNSError as e:
            temporary = getattr(e.os_error, "temporary", True)
            raise Failure("dns", str(e.os_error), temporary) from e
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
            raise Failure("ssl", str(e), False) from e
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, BlockedAddress) or "download.allow_networks" in str(e):
                raise Failure("blocked_address", str(e.os_error), False) from e
            raise Failure("connect", str(e.os_error or e), True) from e
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise Failure("timeout", f"no complete answer in {cfg.timeout_s:g}s", True) from e
        except aiohttp.ServerDisconnectedError as e:
            raise Failure("disconnected", str(e), True) from e
        except aiohttp.ClientPayloadError as e:
            raise Failure("incomplete_body", str(e), True) from e
        except (aiohttp.InvalidURL, ValueError) as e:
            raise Failure("invalid_url", str(e), False) from e
        except aiohttp.ClientResponseError as e:
            raise Failure("bad_response", str(e), False, e.status or None) from e
        except (aiohttp.ClientError, OSError) as e:
            raise Failure("connect", f"{type(e).__name__}: {e}", True) from e

    async def _check_robots(self, scheme: str, netloc: str, url: str) -> None:
        """Raise ``robots_txt`` when the origin's robots.txt disallows ``url`` for our token."""
        origin = f"{scheme}://{netloc}"
        future = self.robots.get(origin)
        if future is None:
            if len(self.robots) >= 100_000:
                self.robots.clear()
            future = self.robots[origin] = asyncio.ensure_future(self._load_robots(origin))
        rules = await asyncio.shield(future)
        if rules is False:
            raise Failure(
                "robots_txt", f"{origin}/robots.txt answers 5xx: complete disallow (RFC 9309)", True
            )
        if rules is not None and not rules.can_fetch(self.cfg.user_agent_token, url):
            raise Failure("robots_txt", f"disallowed by {origin}/robots.txt", False)

    async def _load_robots(self, origin: str) -> RobotFileParser | None | bool:
        """The parsed robots.txt of ``origin``; None when there is none (4xx) or it cannot be
        reached (the image fetch then reports why); False on 5xx (RFC 9309: disallow all)."""
        try:
            async with self.gate_for(origin), self.in_flight:
                body, status = await self._attempt(f"{origin}/robots.txt")
        except Failure as f:
            return False if f.http_status is not None and f.http_status >= 500 else None
        rules = RobotFileParser()
        rules.parse(body.decode("utf-8", errors="replace").splitlines())
        return rules if status == 200 else None

    def gate_for(self, origin: str) -> asyncio.Semaphore:
        """The per-host semaphore of an origin URL."""
        host = (urlsplit(origin).hostname or "").lower()
        return self.hosts.setdefault(host, asyncio.Semaphore(self.cfg.per_host))
