"""``mm1data inspect shard|dataset --html``: one self-contained page to look at packed sequences.

Per sequence: the decoded text with each example in its own colour band (the band's colour is its
stream's), its images inline at their slot positions, loss-masked tokens shaded, padding as a grey
bar, and the example's stream, id, span and lineage on hover. The header shows the manifest's mix
(target, realized, and each shard's realized mix as stacked bars), fill, images per sequence and
token histograms.

Everything that comes from the data (decoded text, ids, lineage, paths, manifest strings) goes
through :func:`html.escape`; images are inlined as ``data:image/jpeg;base64`` URIs; the page
has no script and a Content-Security-Policy that forbids any (so even a missed escape cannot run
code) and loads nothing from the network.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from mm1data.shards.format import STREAMS, Manifest, mix_group
from mm1data.shards.inspect import Sample, read_bytes, read_shard_bytes

Decode = Callable[[list[int]], str]

COLOURS = {"caption": "#4e79a7", "synthetic_caption": "#59a14f", "interleaved": "#f28e2b", "text": "#b07aa1"}
OTHER = "#9c9c9c"
MAX_SHARD_BARS = 200

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px} h3{font-size:13px;margin:0 0 6px}
.muted{color:#666} .grid{display:flex;flex-wrap:wrap;gap:18px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:12px 14px;min-width:240px}
table.kv td{padding:1px 10px 1px 0;vertical-align:top} table.kv td:first-child{color:#666}
.bar{display:flex;height:14px;width:320px;border-radius:3px;overflow:hidden;background:#eee}
.bar span{display:block;height:100%} .barrow{display:flex;align-items:center;gap:8px;margin:2px 0}
.barrow .lbl{width:190px;font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.hist{display:flex;align-items:flex-end;gap:2px;height:90px;border-bottom:1px solid #999}
.hist div{background:#4e79a7;width:16px;min-height:1px}
.hist-l{display:flex;gap:2px;font-size:10px;color:#666}
.hist-l span{width:16px;text-align:center;overflow:visible;white-space:nowrap}
.seq{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px 12px;margin:12px 0}
.seq h3 code{font-weight:normal}
.text{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,monospace;font-size:12.5px}
.ex{border-radius:3px;padding:1px 0;border-left:3px solid var(--c);background:var(--bg)}
.ex:hover{outline:2px solid var(--c)}
.nl{color:#555;background-image:repeating-linear-gradient(135deg,rgba(0,0,0,.13) 0 2px,transparent 2px 5px)}
.img{display:inline-block;vertical-align:middle;margin:2px;border:2px solid var(--c);line-height:0}
.img img{width:96px;height:96px;object-fit:cover}
.pad{display:inline-block;background:#ddd;color:#666;border-radius:3px;padding:0 6px;margin-top:4px}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(value: object) -> str:
    """Text from the data, escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def colour(stream: str) -> str:
    """The colour of a stream (known streams only: anything else is grey)."""
    return COLOURS.get(stream, OTHER)


def _bar(shares: dict[str, float], label: str) -> str:
    order = {s: i for i, s in enumerate(STREAMS)}
    shares = dict(sorted(shares.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    spans = "".join(
        f'<span style="width:{100 * max(0.0, float(v)):.3f}%;background:{colour(k)}" '
        f'title="{esc(k)} {100 * float(v):.2f}%"></span>'
        for k, v in shares.items()
    )
    lbl = f'<div class="lbl" title="{esc(label)}">{esc(label)}</div>'
    return f'<div class="barrow">{lbl}<div class="bar">{spans}</div></div>'


def _legend(streams: Iterable[str]) -> str:
    items = "".join(f'<span><i style="background:{colour(s)}"></i>{esc(s)}</span>' for s in streams)
    return f'<div class="legend">{items}</div>'


def _hist(counts: Sequence[int], labels: Sequence[str], title: str) -> str:
    top = max(counts, default=0) or 1
    cols = "".join(
        f'<div style="height:{100 * c / top:.1f}%" title="≤ {esc(lab)}: {c}"></div>'
        for c, lab in zip(counts, labels, strict=True)
    )
    step = -(-len(labels) // 6) or 1  # about six labels under the axis
    shown = [lab if i % step == 0 else "" for i, lab in enumerate(labels)]
    labs = "".join(f"<span>{esc(lab)}</span>" for lab in shown)
    body = f'<div class="hist">{cols}</div><div class="hist-l">{labs}</div>'
    return f'<div class="card"><h3>{esc(title)}</h3>{body}</div>'


def _binned(values: Sequence[int], bins: int, upper: int) -> tuple[list[int], list[str]]:
    edges = np.linspace(0, max(upper, 1), bins + 1)
    counts, _ = np.histogram(np.asarray(values, dtype=float), bins=edges)
    return counts.tolist(), [f"{int(e)}" for e in edges[1:]]


def _kv(rows: Iterable[tuple[str, object]]) -> str:
    return (
        '<table class="kv">'
        + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _text_runs(
    tokens: np.ndarray, mask: np.ndarray, decode: Decode, skip: set[int]
) -> Iterable[tuple[bool, str]]:
    """(masked, text) runs of tokens that share a loss-mask value; ``skip`` ids are left out."""
    run: list[int] = []
    masked = None
    for t, m in zip(tokens.tolist(), mask.tolist(), strict=True):
        if t in skip:
            continue
        if masked is not None and bool(m == 0) != masked and run:
            yield masked, decode(run)
            run = []
        masked = m == 0
        run.append(t)
    if run:
        yield bool(masked), decode(run)


def sequence_html(s: Sample, decode: Decode, special: dict[str, int], target: Iterable[str] = ()) -> str:
    """One packed sequence: examples as colour bands, images at their slots, masked tokens shaded."""
    markers = {special[k] for k in ("image_start", "image_end") if k in special}
    slots = {im["slot_start"]: (j, im["slot_len"]) for j, im in enumerate(s.meta.get("images", []))}
    out = []
    for k, ex in enumerate(s.meta.get("examples", [])):
        stream = str(ex.get("stream", "?"))
        a, b = (int(x) for x in ex["span"])
        hover = (
            f"example {k + 1}: {stream} · id {ex.get('id')} · tokens [{a}, {b}) · "
            f"lineage {json.dumps(ex.get('lineage'), ensure_ascii=False)}"
        )
        shade = "33" if k % 2 == 0 else "1f"
        style = f"--c:{colour(mix_group(stream, target))};--bg:{colour(mix_group(stream, target))}{shade}"
        parts, i = [], a
        for start in sorted(p for p in slots if a <= p < b) + [b]:
            if i < start:
                for masked, text in _text_runs(s.tokens[i:start], s.loss_mask[i:start], decode, markers):
                    parts.append(f'<span class="nl">{esc(text)}</span>' if masked else esc(text))
            if start < b:
                j, n = slots[start]
                jpeg = s.jpegs[j] if j < len(s.jpegs) else b""
                src = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
                parts.append(
                    f'<span class="img" title="image {j}: slot [{start}, {start + n})">'
                    f'<img alt="image {j}" src="{src}"></span>'
                )
                i = start + n
        out.append(f'<span class="ex" style="{style}" title="{esc(hover)}">{"".join(parts)}</span>')
    pad = int(np.count_nonzero(s.segment_ids == 0))
    used = len(s.tokens) - pad
    head = (
        f"<h3>sequence <code>{esc(s.key)}</code> <span class='muted'>· {len(out)} examples · "
        f"{len(slots)} images · {used}/{len(s.tokens)} tokens "
        f"({100 * used / max(1, len(s.tokens)):.1f}% fill)"
        "</span></h3>"
    )
    tail = f'<div class="pad">padding: {pad} tokens</div>' if pad else ""
    return f'<div class="seq">{head}<div class="text">{"".join(out)}</div>{tail}</div>'


def _mix_card(manifest: Manifest | None, extra: list[tuple[str, dict[str, float]]]) -> str:
    rows = []
    if manifest:
        rows += [_bar(manifest.mix.target, "target"), _bar(manifest.mix.realized, "realized (all shards)")]
    rows += [_bar(shares, label) for label, shares in extra]
    streams = [
        s for s in STREAMS if any(s in sh for _, sh in extra) or (manifest and s in manifest.mix.target)
    ]
    unit = f" by {esc(manifest.mix.unit)}" if manifest else ""
    return f'<div class="card"><h3>mix{unit}</h3>{_legend(streams)}{"".join(rows)}</div>'


def _stats_cards(samples: list[Sample]) -> str:
    n_images = [len(s.meta.get("images", [])) for s in samples]
    top = max(n_images, default=0)
    img_counts = [n_images.count(i) for i in range(top + 1)]
    seq_len = len(samples[0].tokens) if samples else 1
    used = [int(np.count_nonzero(s.segment_ids)) for s in samples]
    lengths: Counter[int] = Counter()
    for s in samples:
        for ex in s.meta.get("examples", []):
            lengths[int(ex["span"][1]) - int(ex["span"][0])] += 1
    ex_counts, ex_labels = _binned(list(lengths.elements()), 12, seq_len)
    seq_counts, seq_labels = _binned(used, 10, seq_len)
    fill = sum(used) / (seq_len * len(samples)) if samples else 0.0
    return (
        f'<div class="card"><h3>fill</h3><div style="font-size:28px">{100 * fill:.2f}%</div>'
        f'<div class="muted">{sum(used):,} of {seq_len * len(samples):,} tokens in {len(samples)} sequences'
        "</div></div>"
        + _hist(img_counts, [str(i) for i in range(top + 1)], "images per sequence")
        + _hist(seq_counts, seq_labels, "non-pad tokens per sequence")
        + _hist(ex_counts, ex_labels, "tokens per example")
    )


def _page(title: str, header: str, sections: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>{header}{''.join(sections)}</body></html>\n"
    )


def _manifest_rows(m: Manifest) -> list[tuple[str, object]]:
    return [
        ("format", f"{m.format} v{m.version}"),
        ("layout", f"seq_len {m.seq_len}, {m.image_tokens} tokens per image, ≤ {m.max_images} images"),
        ("images", f"{m.image_size}² JPEG q{m.jpeg_quality}"),
        ("tokenizer", f"{m.tokenizer.name} (vocab {m.tokenizer.vocab_size})"),
        ("shards", f"{m.totals.shards} in {m.partitions} partition(s), {m.totals.bytes / 1e6:.1f} MB"),
        (
            "sequences",
            f"{m.totals.sequences:,} · {m.totals.examples:,} examples · {m.totals.images:,} images",
        ),
        ("fill", f"{100 * m.totals.fill:.2f}%"),
        ("epochs", ", ".join(f"{k} {v:.3f}" for k, v in m.epochs.items())),
    ]


def _sequences(samples: list[Sample], decode: Decode, special: dict[str, int], target: Iterable[str]) -> str:
    legend = (
        '<p class="muted">Each example is a band in its stream\'s colour; '
        '<span class="nl">shaded text</span> has loss 0 (not a prediction target); '
        "hover an example for its stream, id, span and lineage.</p>"
    )
    return legend + "".join(sequence_html(s, decode, special, tuple(target)) for s in samples)


def _special_of(samples: list[Sample], manifest: Manifest | None) -> dict[str, int]:
    if manifest:
        return dict(manifest.special_tokens)
    slot = next((im for s in samples for im in s.meta.get("images", [])), None)
    first = next((s for s in samples if slot in s.meta.get("images", [])), None)
    return {"image": int(first.tokens[slot["slot_start"]])} if first is not None and slot else {}


def shard_page(
    path: str,
    samples: list[Sample],
    summary: dict,
    manifest: Manifest | None,
    decode: Decode,
    max_sequences: int = 32,
) -> str:
    """The page of one shard: its mix against the manifest's, statistics, and its sequences."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    entry = next((e for e in manifest.shards if e.path == name), None) if manifest else None
    target = manifest.mix.target if manifest else ()
    shard_mix = dict(entry.mix) if entry else _shares(summary.get("tokens", {}), target)
    info = [
        ("sequences", summary.get("sequences")),
        ("bytes", f"{summary.get('bytes', 0):,}"),
        ("integrity", "ok" if summary.get("ok") else f"{len(summary.get('problems', []))} problems"),
        ("tokens", ", ".join(f"{k} {v:,}" for k, v in summary.get("tokens", {}).items())),
    ]
    if entry is not None:
        info.append(("full shard", "yes" if entry.full else "no (last of its partition)"))
    header = (
        '<div class="grid">'
        f'<div class="card"><h3>shard</h3>{_kv(info)}</div>'
        + (f'<div class="card"><h3>dataset</h3>{_kv(_manifest_rows(manifest))}</div>' if manifest else "")
        + _mix_card(manifest, [(f"this shard ({name})", shard_mix)])
        + _stats_cards(samples)
        + "</div>"
    )
    shown = samples[:max_sequences]
    more = f" (first {len(shown)} of {len(samples)})" if len(shown) < len(samples) else ""
    body = f"<h2>sequences{more}</h2>" + _sequences(shown, decode, _special_of(samples, manifest), target)
    return _page(f"mm1data shard {name}", header, [body])


def _shares(tokens: dict[str, int], target: Iterable[str]) -> dict[str, float]:
    grouped: Counter[str] = Counter()
    for k, v in tokens.items():
        grouped[mix_group(k, target)] += v
    total = sum(grouped.values()) or 1
    return {k: v / total for k, v in grouped.items()}


def dataset_page(root: str, manifest: Manifest, decode: Decode, n_sequences: int = 8) -> str:
    """The page of a dataset: manifest, the mix of every shard, and the first sequences."""
    bars = [(e.path, dict(e.mix)) for e in manifest.shards[:MAX_SHARD_BARS]]
    samples: list[Sample] = []
    for e in manifest.shards:
        if len(samples) >= n_sequences:
            break
        samples += read_shard_bytes(read_bytes(f"{root.rstrip('/')}/{e.path}"))[: n_sequences - len(samples)]
    cut = (
        f" (first {MAX_SHARD_BARS} of {len(manifest.shards)})"
        if len(manifest.shards) > MAX_SHARD_BARS
        else ""
    )
    header = (
        '<div class="grid">'
        f'<div class="card"><h3>dataset</h3>{_kv(_manifest_rows(manifest))}</div>'
        + _mix_card(manifest, [])
        + _stats_cards(samples)
        + "</div>"
        + f"<h2>realized mix per shard{esc(cut)}</h2>"
        + f'<div class="card">{_legend(manifest.streams)}{"".join(_bar(sh, p) for p, sh in bars)}</div>'
        + '<details class="card"><summary>build config</summary>'
        + f"<pre>{esc(json.dumps(manifest.build, indent=1))}</pre></details>"
    )
    body = f"<h2>first {len(samples)} sequences</h2>" + _sequences(
        samples, decode, dict(manifest.special_tokens), manifest.mix.target
    )
    return _page(f"mm1data dataset {root}", header, [body])
