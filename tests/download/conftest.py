"""Fixtures for download tests: the COCO-mini JPEGs, a loopback image server, a loopback DNS."""

from __future__ import annotations

from pathlib import Path

import pytest

from mm1data.config import DownloadConfig
from tests.download.dns import NxDomainServer
from tests.download.server import ImageServer


@pytest.fixture(scope="session")
def coco_images(shared_data: Path) -> dict[str, bytes]:
    """Every COCO-mini val2017 JPEG by file name (79 real images)."""
    return {p.name: p.read_bytes() for p in sorted((shared_data / "a-coco-mini" / "val2017").glob("*.jpg"))}


@pytest.fixture
def server(coco_images):
    """A fresh image server on 127.0.0.1 (planted cases: see ImageServer)."""
    with ImageServer(coco_images, slow_s=3.0, huge_bytes=2 * 1024 * 1024) as srv:
        yield srv


@pytest.fixture(scope="session")
def nxdomain():
    """A loopback DNS server answering NXDOMAIN to every name."""
    with NxDomainServer() as dns:
        yield dns


def loopback_config(dns_address: str, **over) -> DownloadConfig:
    """Short timeouts and backoff for loopback tests; names resolve only at the NXDOMAIN stub and
    connections reach 127.0.0.0/8 only (the real tables hold URLs that name internet addresses)."""
    base = dict(enabled=True, timeout_s=1.0, retries=2, backoff_s=0.05, max_bytes=1024 * 1024)
    return DownloadConfig(
        **{**base, "dns_servers": (dns_address,), "allow_networks": ("127.0.0.0/8",), **over}
    )


def planted(srv: ImageServer, names: list[str]) -> list[tuple[str, str | None]]:
    """(URL, expected reason or None when the image must be had) for every planted case."""
    a, b, c, d, e, f, g, h, i = names[:9]
    return [
        (srv.url(f"img/{a}"), None),
        (srv.url(f"img/{b}"), None),
        (srv.url(f"404/{a}"), "http_404"),
        (srv.url(f"403/{a}"), "http_4xx"),
        (srv.url(f"flaky500/{c}"), None),
        (srv.url(f"429/{d}"), None),
        (srv.url(f"slow/{e}"), "timeout"),
        (srv.url(f"noai/{f}"), "x_robots_tag"),
        (srv.url(f"otherbot/{g}"), None),
        (srv.url(f"html/{a}"), "not_an_image"),
        (srv.url(f"truncated/{h}"), "image_undecodable"),
        (srv.url("bomb.png"), "decompression_bomb"),
        (srv.url("loop/0"), "too_many_redirects"),
        (srv.url(f"redirect/{i}"), None),
        (srv.url("huge"), "too_large"),
        ("http://unreachable.example/photo.jpg", "dns"),
        ("http://127.0.0.1:1/refused.jpg", "connect"),
    ]
