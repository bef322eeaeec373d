"""HTML → items: URL resolution (RFC 3986, exactly as urljoin), image sources, DOM simplification,
and a hand-checked reading order on a real page."""

from __future__ import annotations

import base64
from urllib.parse import urljoin

import pytest
from fastwarc.warc import ArchiveIterator

from mm1data.ingest.html import html_to_items, parse_srcset, resolve

# (page URL, <base href> or None, src, expected absolute URL): checked by hand against RFC 3986 §5.4
RELATIVE_URLS = [
    # a directory page: OBELICS prepends the host and gets https://www.cs.cmu.edu/img/a.jpg
    ("https://www.cs.cmu.edu/~anaik/", None, "img/a.jpg", "https://www.cs.cmu.edu/~anaik/img/a.jpg"),
    (
        "https://www.cs.cmu.edu/~anaik/index.html",
        None,
        "img/a.jpg",
        "https://www.cs.cmu.edu/~anaik/img/a.jpg",
    ),
    ("http://a.com/b/c/page.html", None, "./x.png", "http://a.com/b/c/x.png"),
    ("http://a.com/b/c/page.html", None, "../img/x.png", "http://a.com/b/img/x.png"),
    ("http://a.com/b/c/page.html", None, "../../../../x.png", "http://a.com/x.png"),
    ("http://a.com/b/c/page.html", None, "/abs/x.png", "http://a.com/abs/x.png"),
    # network-path reference keeps the page's scheme (OBELICS forces http:)
    ("https://a.com/b/page", None, "//cdn.b.org/x.jpg", "https://cdn.b.org/x.jpg"),
    ("http://a.com/b/page?q=1", None, "?v=2", "http://a.com/b/page?v=2"),
    ("http://a.com/b/page", None, "x.jpg#frag", "http://a.com/b/x.jpg#frag"),
    ("http://a.com/b/page", None, "  img/sp ace.jpg\n", "http://a.com/b/img/sp ace.jpg"),
    ("http://a.com/b/page", None, "HTTPS://Other.org/X.JPG", "HTTPS://Other.org/X.JPG"),
    # <base href>: absolute, relative to the page, and a directory without a trailing slash
    (
        "http://a.com/p/page.html",
        "https://static.a.com/assets/",
        "i/x.jpg",
        "https://static.a.com/assets/i/x.jpg",
    ),
    ("http://a.com/p/q/page.html", "../r/", "x.jpg", "http://a.com/p/r/x.jpg"),
    ("http://a.com/p/page.html", "http://a.com/assets", "x.jpg", "http://a.com/x.jpg"),
    ("http://a.com/p/page.html", "/static/", "../x.jpg", "http://a.com/x.jpg"),
]


@pytest.mark.parametrize(("page", "base", "src", "expected"), RELATIVE_URLS)
def test_img_src_resolves_as_urljoin_against_page_and_base_href(page, base, src, expected):
    head = f'<head><base href="{base}"></head>' if base else ""
    html = f'<html>{head}<body><p>Text before.</p><img src="{src}"></body></html>'
    (image,) = [v for k, v in html_to_items(html, page) if k == "image"]
    assert image.url == expected
    assert image.url == urljoin(urljoin(page, base) if base else page, src.strip())


def test_non_http_sources_are_not_images():
    for src in ("javascript:void(0)", "about:blank", "mailto:a@b.c", "   "):
        (image,) = [v for k, v in html_to_items(f'<img src="{src}">', "http://a.com/") if k == "image"]
        assert image.candidates == [] and image.problem == "no_src"
    assert resolve("http://a.com/", "http://[::1") is None


@pytest.mark.parametrize(
    ("srcset", "largest"),
    [
        ("small.jpg 300w, big.jpg 1200w, mid.jpg 600w", "http://a.com/d/big.jpg"),
        ("a.jpg, b.jpg 2x, c.jpg 1.5x", "http://a.com/d/b.jpg"),
        (
            "https://res.cloudinary.com/x/w_300,h_200/a.jpg 300w, "
            "https://res.cloudinary.com/x/w_600,h_400/a.jpg 600w",
            "https://res.cloudinary.com/x/w_600,h_400/a.jpg",
        ),
        ("../up.jpg 10w,/root.jpg 20w", "http://a.com/root.jpg"),
    ],
)
def test_srcset_largest_candidate_is_preferred_over_src(srcset, largest):
    html = f'<img src="fallback.jpg" srcset="{srcset}" alt=" A cat " width="300" height="200px">'
    (image,) = [v for k, v in html_to_items(html, "http://a.com/d/page") if k == "image"]
    assert image.url == largest
    assert image.candidates[-1] == "http://a.com/d/fallback.jpg"  # kept for the WARC lookup
    assert (image.alt, image.width, image.height) == ("A cat", 300, 200)


def test_srcset_parsing_follows_whatwg():
    assert parse_srcset(" a.jpg 1x ,b.jpg 2x,, c,d.jpg 300w ") == [
        ("a.jpg", 1.0),
        ("b.jpg", 2.0),
        ("c,d.jpg", 300.0),
    ]
    assert parse_srcset("x.jpg,") == [("x.jpg", 1.0)]


def test_lazy_loading_attribute_beats_a_placeholder_src():
    gif = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
    html = f'<img src="{gif}" data-src="real.jpg" width="100%"><img src="a.jpg" data-lazy-src="b.jpg">'
    images = [v for k, v in html_to_items(html, "http://a.com/") if k == "image"]
    assert [i.url for i in images] == ["http://a.com/real.jpg", "http://a.com/b.jpg"]
    assert images[0].width is None  # a percentage is not a pixel size
    assert images[1].candidates == ["http://a.com/b.jpg", "http://a.com/a.jpg"]


def test_data_uri_images_are_decoded(shared_data):
    png = next(
        r.reader.read()
        for r in ArchiveIterator(open(shared_data / "b-interleaved/warc/pywb-iana.warc.gz", "rb"))
        if r.http_content_type == "image/png"
    )
    html = f'<p>Logo:</p><img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="IANA">'
    (image,) = [v for k, v in html_to_items(html, "http://a.com/") if k == "image"]
    assert image.data == png and image.url == "data:image/png;base64,"
    (broken,) = [
        v for k, v in html_to_items('<img src="data:image/png;base64,@@@">', "http://a.com/") if k == "image"
    ]
    assert broken.problem == "bad_data_uri"


def test_simplification_drops_boilerplate_and_hidden_nodes_and_unwraps_inline_tags():
    html = """<html><head><title>T</title><style>p{}</style></head><body>
      <header><a href="/"><img src="logo.png"></a> Site name</header>
      <nav><ul><li>Home</li><li>About</li></ul></nav>
      <div id="menu">Menu item</div><div class="sidebar Navbar">Links</div>
      <!-- a comment --><script>var x = 1;</script>
      <h1>Title <small>here</small></h1>
      <p>First <b>bold</b><i>italic</i> <a href="#">link</a>.</p>
      <p hidden>Hidden.</p><p style="display: none">Invisible.</p><p aria-hidden="true">Aria.</p>
      <div class="post-date">12 May 2020</div>
      <ul><li>one</li><li>two</li></ul>
      <table><tr><td>a</td><td>b</td></tr></table>
      <img src="pic.jpg">
      <p>After<br>the picture.</p>
      <footer><img src="footer.png">Copyright</footer>
    </body></html>"""
    items = html_to_items(html, "http://a.com/")
    assert [k for k, _ in items] == ["text", "image", "text"]
    assert items[0][1] == "Title here\n\nFirst bolditalic link.\n\none\ntwo\n\na b"
    assert items[1][1].url == "http://a.com/pic.jpg"
    assert items[2][1] == "After\nthe picture."


def test_a_header_holding_the_article_is_kept():
    words = " ".join(["word"] * 25)
    html = f"<header><h1>Post</h1><p>{words}</p></header><p>More.</p>"
    assert html_to_items(html, "http://a.com/") == [("text", f"Post\n\n{words}\n\nMore.")]


def test_deeply_nested_pages_do_not_hit_the_recursion_limit():
    html = "<div>" * 5000 + "deep" + "</div>" * 5000
    assert html_to_items(html, "http://a.com/") == [("text", "deep")]


def test_reading_order_of_a_real_page_hand_checked(shared_data):
    """http://www.iana.org/numbers in the pywb WARC, read in a browser: heading, two paragraphs,
    the RIR map, the RIR table, then the allocation lists; the header logo and the ICANN footer
    logo are boilerplate."""
    with open(shared_data / "b-interleaved/warc/pywb-iana.warc.gz", "rb") as f:
        record = next(r for r in ArchiveIterator(f) if r.stream_pos == 321385)
        items = html_to_items(record.reader.read(), "http://www.iana.org/numbers")
    assert [k for k, _ in items] == ["text", "image", "text"]
    first, image, rest = items[0][1], items[1][1], items[2][1]
    assert first.split("\n\n")[:2] == [
        "Number Resources",
        "IANA is responsible for global coordination of the Internet Protocol addressing systems, "
        "as well as the Autonomous System Numbers used for routing Internet traffic.",
    ]
    assert first.endswith("or from their appropriate Regional Internet Registry (RIR):")
    assert (image.url, image.alt) == ("http://www.iana.org/_img/2013.1/rir-map.svg", "Map of RIRs")
    assert rest.split("\n")[:3] == [
        "Registry Area Covered",
        "AFRINIC Africa Region",
        "APNIC Asia/Pacific Region",
    ]
    assert "IPv6 Multicast Address Allocations" in rest and "ICANN" not in rest.split("\n")[-1]
