"""HTML page → text and ``<img>`` items in reading order, the OBELICS way (Laurençon et al. 2023).

OBELICS simplifies the DOM (``obelics/processors/dom_tree_simplificator.py``) and then walks it
(``pre_extraction_simplificator.py``): comments, scripts, styles and every tag outside its list of
structural and media tags are removed with their content, inline tags are unwrapped, nodes whose
id/class names a footer, header, navigation or menu are dropped, and adjacent text nodes are
merged with the strongest separator of the structural tags between them (``"\\n\\n"`` for
paragraphs, headings and lists, ``"\\n"`` for divisions, a space otherwise). This module does the
same in one pass over a lexbor tree (selectolax), with these deliberate differences:

- list items, table cells and forms are kept (OBELICS strips ``li``, ``td`` and ``form`` with their
  content, which loses lists, tables and whole ASP.NET pages); boilerplate containers (``nav``,
  ``footer``, ``menu``, ARIA navigation/banner/contentinfo roles) and hidden nodes (``hidden``,
  ``aria-hidden="true"``, ``display:none``, ``visibility:hidden``) are dropped, and so is a
  ``header`` unless it holds a real paragraph (some site builders put the whole post in one);
- an image's URL comes from lazy-load attributes (``data-src`` and friends), then the largest
  ``srcset`` candidate, then ``src`` (OBELICS takes the first attribute without a comma or space,
  so it never reads ``srcset`` and often keeps a lazy-load placeholder); every candidate is kept
  so the WARC reader can find whichever one the crawler fetched;
- URLs are resolved against the page URL and the first ``<base href>`` exactly as
  :func:`urllib.parse.urljoin` does (RFC 3986); OBELICS prepends the host to every relative path
  (``/~user/`` + ``img/a.jpg`` → ``/img/a.jpg``);
- ``data:`` URIs are decoded to bytes (the image rules then drop pixels and icons).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

from selectolax.lexbor import LexborHTMLParser

DROP_TAGS = frozenset(
    "head script style noscript template title nav footer menu menuitem button select option "
    "optgroup datalist textarea input iframe frame frameset object embed applet svg math canvas video "
    "audio map dialog".split()
)
"""Removed with everything inside them."""

SPECIAL_NAMES = frozenset({"footer", "header", "navigation", "nav", "navbar", "menu", "site-info"})
"""An element whose id or one of whose class names is one of these is dropped (OBELICS
``_strip_special_divs`` and its ``css_rules``)."""

HEADER_CONTENT_WORDS = 20
"""A ``<header>`` is a banner and dropped, unless it holds a paragraph, article or main of at least
this many words (site builders such as Webflow put whole posts in ``<header>`` sections)."""

DROP_ROLES = frozenset({"navigation", "banner", "contentinfo", "menu", "menubar"})

PARAGRAPH = "\n\n"
LINE = "\n"
SPACE = " "
_RANK = {"": 0, SPACE: 1, LINE: 2, PARAGRAPH: 3}

SEPARATORS: dict[str, str] = {
    **dict.fromkeys("p h1 h2 h3 h4 h5 h6 ul ol dl blockquote pre table hr figure".split(), PARAGRAPH),
    **dict.fromkeys(
        "div li dd dt tr section article main aside address center figcaption legend summary details "
        "caption fieldset hgroup form body".split(),
        LINE,
    ),
    **dict.fromkeys("td th".split(), SPACE),
}
"""Separator a structural tag puts around its content (OBELICS ``TAG_TO_SEP``, plus lists and
tables); any other tag is unwrapped (its text runs on)."""

LAZY_SRC_ATTRS = (
    "data-src",
    "data-lazy-src",
    "data-original",
    "data-lazy",
    "data-src-fg",
    "data-scroll-image",
    "data-lateloadsrc",
    "data-img-src",
    "data-gt-lazy-src",
    "data-url",
    "src2",
)
"""Lazy-loading attributes that hold the real image URL while ``src`` holds a placeholder
(the list OBELICS reads, in its order, plus ``data-url``)."""

SRCSET_ATTRS = ("srcset", "data-srcset", "data-lazy-srcset")

_WS = re.compile(r"\s+")
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:px)?\s*;?\s*$", re.IGNORECASE)
_ASCII_WS = " \t\n\r\f"


@dataclass
class ImageRef:
    """One ``<img>``: its URL candidates (resolved, preferred first), decoded ``data:`` bytes if the
    preferred source is a ``data:`` URI, alt text and rendered size."""

    candidates: list[str] = field(default_factory=list)
    data: bytes | None = None
    alt: str | None = None
    width: int | None = None
    height: int | None = None
    problem: str | None = None  # why no URL could be had ("no_src", "bad_data_uri", ...)

    @property
    def url(self) -> str | None:
        """The preferred URL (``data:`` URIs are shortened to their media type)."""
        return self.candidates[0] if self.candidates else None


Item = tuple[str, "str | ImageRef"]
"""``("text", paragraphs)`` or ``("image", ImageRef)``."""


def parse_srcset(value: str) -> list[tuple[str, float]]:
    """``srcset`` candidates as ``(url, size)``; size is the ``w`` width, else the ``x`` density
    (1 when absent). Follows the WHATWG parsing steps (URLs may contain commas)."""
    out: list[tuple[str, float]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and (value[i] in _ASCII_WS or value[i] == ","):
            i += 1
        start = i
        while i < n and value[i] not in _ASCII_WS:
            i += 1
        url = value[start:i]
        if not url:
            break
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start = i
            depth = 0
            while i < n and (value[i] != "," or depth):
                depth += value[i] == "("
                depth -= value[i] == ")" and depth > 0
                i += 1
            descriptor = value[start:i].strip()
        size = 1.0
        for d in descriptor.split():
            try:
                if d[-1:] in ("w", "x") and float(d[:-1]) > 0:
                    size = float(d[:-1])
            except ValueError:
                pass
        if url:
            out.append((url, size))
    return out


def _largest(srcset: str) -> str | None:
    cands = parse_srcset(srcset)
    if not cands:
        return None
    best = max(range(len(cands)), key=lambda k: (cands[k][1], -k))
    return cands[best][0]


def _size(value: str | None) -> int | None:
    if not value:
        return None
    m = _SIZE.match(value)
    return int(float(m.group(1))) if m else None


def decode_data_uri(uri: str) -> bytes | None:
    """The bytes of a ``data:`` URI (base64 or percent-encoded), or None when malformed or empty."""
    head, sep, payload = uri.partition(",")
    if not sep:
        return None
    try:
        if head.lower().endswith(";base64"):
            packed = _WS.sub("", payload)
            data = base64.b64decode(packed + "=" * (-len(packed) % 4), validate=True)
        else:
            data = unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        return None
    return data or None


def resolve(base: str, ref: str) -> str | None:
    """``ref`` resolved against ``base`` as :func:`urllib.parse.urljoin` does, after trimming ASCII
    whitespace as browsers do; None for references that are not http(s) or ``data:``."""
    ref = ref.strip(_ASCII_WS)
    if not ref:
        return None
    if ref[:5].lower() == "data:":
        return ref
    try:
        url = urljoin(base, ref)
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # e.g. an invalid IPv6 literal
        return None
    return url if scheme in ("http", "https") else None


def image_ref(attrs: dict, base: str) -> ImageRef:
    """The :class:`ImageRef` of an ``<img>`` with attributes ``attrs`` on a page at ``base``."""
    raw: list[str] = []
    for a in LAZY_SRC_ATTRS:
        v = attrs.get(a)
        if v:
            raw.append(v)
    for a in SRCSET_ATTRS:
        v = attrs.get(a)
        if v:
            big = _largest(v)
            if big:
                raw.append(big)
    if attrs.get("src"):
        raw.append(attrs["src"])
    resolved = [u for u in (resolve(base, r) for r in raw) if u]
    # a data: placeholder (1x1 GIF) loses to any real URL; a lone data: URI is the image itself
    real = [u for u in dict.fromkeys(resolved) if not u[:5].lower() == "data:"]
    ref = ImageRef(
        candidates=real,
        alt=(attrs.get("alt") or "").strip() or None,
        width=_size(attrs.get("width")),
        height=_size(attrs.get("height")),
    )
    if not real and resolved:
        ref.data = decode_data_uri(resolved[0])
        ref.candidates = [resolved[0].split(",", 1)[0] + ","]
        if ref.data is None:
            ref.problem = "bad_data_uri"
    elif not real:
        ref.problem = "no_src"
    return ref


DROP_SELECTOR = ", ".join(
    [f'[id="{name}" i], [class~="{name}" i]' for name in sorted(SPECIAL_NAMES)]
    + [f'[role="{role}" i]' for role in sorted(DROP_ROLES)]
    + ["[hidden]", '[aria-hidden="true" i]']
)
"""Elements dropped with their content: special ids/classes, boilerplate ARIA roles, hidden nodes."""


def _dropped_ids(tree: LexborHTMLParser) -> set[int]:
    """``mem_id`` of every element to drop, found with lexbor's CSS engine (no per-node Python)."""
    ids = {n.mem_id for n in tree.css(DROP_SELECTOR)}
    for n in tree.css('[style*="none" i], [style*="hidden" i]'):
        if _HIDDEN_STYLE.search(n.attributes.get("style") or ""):
            ids.add(n.mem_id)
    for n in tree.css("header"):
        if not any(len(p.text().split()) >= HEADER_CONTENT_WORDS for p in n.css("p, article, main")):
            ids.add(n.mem_id)
    return ids


def page_base(tree: LexborHTMLParser, page_url: str) -> str:
    """The document base URL: the first ``<base href>`` resolved against the page URL."""
    base = tree.css_first("base[href]")
    if base is not None:
        href = (base.attributes.get("href") or "").strip(_ASCII_WS)
        if href:
            try:
                return urljoin(page_url, href)
            except ValueError:
                return page_url
    return page_url


class _Text:
    """Accumulates the text of one item: runs joined by the strongest separator seen between them."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.sep = ""

    def separate(self, sep: str) -> None:
        if _RANK[sep] > _RANK[self.sep]:
            self.sep = sep

    def add(self, raw: str) -> None:
        run = _WS.sub(" ", raw)
        if not run.strip():
            if run:
                self.separate(SPACE)
            return
        if run[0] == " ":
            self.separate(SPACE)
        if self.parts:
            self.parts.append(self.sep)
        self.parts.append(run.strip())
        self.sep = SPACE if run[-1] == " " else ""

    def flush(self) -> str | None:
        text = "".join(self.parts).strip()
        self.parts, self.sep = [], ""
        return text or None


def html_to_items(html: str | bytes, page_url: str) -> list[Item]:
    """Reading-order items of an HTML page: text runs (paragraphs separated by blank lines) and
    ``<img>`` references, after OBELICS-style DOM simplification (see the module docstring)."""
    tree = LexborHTMLParser(html)
    base = page_base(tree, page_url)
    root = tree.body or tree.root
    items: list[Item] = []
    if root is None:
        return items
    dropped = _dropped_ids(tree)
    # OBELICS `_remove_dates`: the text inside a div whose class mentions "date" is removed
    dates = {n.mem_id for n in tree.css('div[class*="date" i]')}
    text = _Text()
    # iterative DFS over sibling/parent links: pages nest deeper than Python's recursion limit
    stack: list[tuple[str, bool]] = []  # per open element: (its separator, text muted outside it)
    muted = False
    node = root.child
    while node is not None:
        tag = node.tag
        descend = False
        if tag == "-text":
            if not muted:
                text.add(node.text_content or "")
        elif tag and tag[0] not in "-_!" and tag not in DROP_TAGS and node.mem_id not in dropped:
            if tag == "img":
                done = text.flush()
                if done:
                    items.append(("text", done))
                items.append(("image", image_ref(node.attributes, base)))
            elif tag == "br":
                text.separate(LINE)
            else:
                sep = SEPARATORS.get(tag, "")
                if sep:
                    text.separate(sep)
                if node.child is not None:
                    stack.append((sep, muted))
                    muted = muted or (tag == "div" and node.mem_id in dates)
                    descend = True
        if descend:
            node = node.child
            continue
        while node is not None:
            nxt = node.next
            if nxt is not None:
                node = nxt
                break
            if not stack:
                node = None
                break
            node = node.parent
            sep, muted = stack.pop()
            if sep:
                text.separate(sep)
    done = text.flush()
    if done:
        items.append(("text", done))
    return items


def count_img_tags(html: str | bytes) -> int:
    """Number of ``<img>`` elements in a page (for accounting in tests and reports)."""
    return len(LexborHTMLParser(html).css("img"))
