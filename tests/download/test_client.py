"""The network client on a real loopback HTTP server: every planted case gets its exact reason."""

from __future__ import annotations

import asyncio

from mm1data.config import IngestConfig
from mm1data.download.client import Client, parse_retry_after, robots_tag_block, status_reason, user_agent
from mm1data.download.fetch import judge
from tests.download.conftest import loopback_config, planted


def fetch_all(cfg, urls: list[str]) -> list[dict]:
    """Fetch ``urls`` with one client and judge each result (the one image decode)."""

    async def run():
        client = Client(cfg, seed=0)
        try:
            return await asyncio.gather(*(client.fetch(u) for u in urls))
        finally:
            await client.close()

    fetched = asyncio.run(run())
    return [judge(f, IngestConfig(), None, md5=True) for f in fetched]


def test_every_planted_case_gets_its_reason(server, coco_images, nxdomain):
    cases = planted(server, list(coco_images))
    results = fetch_all(loopback_config(nxdomain.address), [u for u, _ in cases])
    assert [r["reason"] for r in results] == [want for _, want in cases]
    by_url = {r["url"]: r for r in results}
    ok = [r for r in results if r["status"] == "ok"]
    assert all(r["width"] > 0 and len(r["image_sha256"]) == 64 for r in ok)
    names = list(coco_images)
    # 500 then 200, and 429 (Retry-After: 1) then 200: two attempts each, the second 1 s later
    assert by_url[server.url(f"flaky500/{names[2]}")]["attempts"] == 2
    assert by_url[server.url(f"429/{names[3]}")]["attempts"] == 2
    first, second = server.times[f"429/{names[3]}"]
    assert second - first >= 1.0
    # no retry on 404/403 or opt-outs; retries on timeouts and refused connections
    assert server.received[f"404/{names[0]}"] == 1 and server.received[f"403/{names[0]}"] == 1
    assert server.received[f"noai/{names[5]}"] == 1
    assert server.received[f"slow/{names[4]}"] == 3
    assert by_url["http://127.0.0.1:1/refused.jpg"]["attempts"] == 3
    assert by_url["http://127.0.0.1:1/refused.jpg"]["retryable"] is True
    assert by_url[server.url(f"404/{names[0]}")]["retryable"] is False
    # a redirect loop stops at the limit: max_redirects (10) requests in all
    assert sum(n for p, n in server.received.items() if p.startswith("loop/")) == 10


def test_dns_failures_fail_fast_with_one_lookup_per_host(nxdomain):
    cfg = loopback_config(nxdomain.address, timeout_s=10.0)
    before = dict(nxdomain.queries)
    urls = [f"https://img{i % 7}.unreachable-host.test/{i}.jpg" for i in range(300)]
    results = fetch_all(cfg, urls)
    assert {r["reason"] for r in results} == {"dns"}
    assert all(r["attempts"] == 1 and r["retryable"] is False for r in results)
    asked = {k: v - before.get(k, 0) for k, v in nxdomain.queries.items() if v - before.get(k, 0)}
    assert set(asked) == {f"img{i}.unreachable-host.test" for i in range(7)}
    assert max(asked.values()) <= 2  # A and AAAA at most, once per host for all 300 URLs


def test_robots_txt_when_asked(coco_images, nxdomain):
    from tests.download.server import ImageServer

    rules = "User-agent: mm1data\nDisallow: /img/private\n\nUser-agent: *\nDisallow:\n"
    name = next(iter(coco_images))
    with ImageServer({name: coco_images[name], "private": coco_images[name]}, robots=rules) as srv:
        urls = [srv.url(f"img/{name}"), srv.url("img/private")]
        assert [r["reason"] for r in fetch_all(loopback_config(nxdomain.address), urls)] == [None, None]
        on = loopback_config(nxdomain.address, robots_txt=True)
        assert [r["reason"] for r in fetch_all(on, urls)] == [None, "robots_txt"]
        assert srv.served["robots.txt"] == 1  # cached per origin


def test_x_robots_tag_scoping():
    deny = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
    assert robots_tag_block(["noai"], "mm1data", deny) == "noai"
    assert robots_tag_block(["nofollow, NoImageIndex"], "mm1data", deny) == "nofollow, NoImageIndex"
    assert robots_tag_block(["otherbot: noindex"], "mm1data", deny) is None
    assert robots_tag_block(["mm1data: noai"], "mm1data", deny) == "mm1data: noai"
    assert robots_tag_block(["unavailable_after: 25 Jun 2010 15:00:00 PST"], "mm1data", deny) is None
    assert robots_tag_block(["nofollow"], "mm1data", deny) is None


def test_status_reasons_retry_after_and_user_agent():
    from mm1data.config import DownloadConfig

    assert [status_reason(s) for s in (404, 403, 410, 429, 500, 503, 301)] == [
        "http_404",
        "http_4xx",
        "http_4xx",
        "http_429",
        "http_5xx",
        "http_5xx",
        "http_3xx",
    ]
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert "mm1data/" in user_agent(DownloadConfig())
    assert "mybot" in user_agent(DownloadConfig(user_agent_token="mybot"))


def test_addresses_outside_allow_networks_are_never_connected(nxdomain):
    (result,) = fetch_all(loopback_config(nxdomain.address), ["http://198.51.100.7/photo.jpg"])
    assert result["reason"] == "blocked_address" and result["attempts"] == 1
