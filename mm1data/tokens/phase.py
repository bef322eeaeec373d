"""The tokenize phase: kept records → examples (tokens with image slots, images re-encoded once).

Each stream's kept records are rendered on workers (:mod:`mm1data.tokens.render`, the second and
last decode of each image); a record that cannot be rendered becomes a rejected example (stage
``tokenize``). The output ``examples`` holds every example with its payload; the plan reads only
its metadata columns.
"""

from __future__ import annotations

from typing import Any

from mm1data.config import BuildConfig
from mm1data.runners.executor import Context, Data, Output, Phase
from mm1data.runners.pipeline import map_in_slices
from mm1data.schemas import STREAMS
from mm1data.tokens.render import EXAMPLE, render_batch
from mm1data.tokens.tokenizer import TextTokenizer

RENDER_BATCH_ROWS = 64
"""Records rendered per call (a worker holds their decoded images at once)."""


def synthetic_share(cfg: BuildConfig, target: dict[str, float]) -> float:
    """``synthetic_ratio``, or by default the synthetic_caption share of all captions in the mix."""
    if cfg.synthetic_ratio is not None:
        return cfg.synthetic_ratio
    syn = target.get("synthetic_caption", 0.0)
    return syn / (syn + target.get("caption", 0.0)) if syn else 0.0


def render_fingerprint(cfg: BuildConfig) -> dict:
    """The build settings rendering depends on."""
    keys = (
        "seq_len",
        "image_tokens",
        "max_images",
        "image_size",
        "image_markers",
        "jpeg_quality",
        "tokenizer",
        "seed",
        "synthetic_ratio",
    )
    return {k: getattr(cfg, k) for k in keys}


class TokenizePhase(Phase):
    """Render every kept record of every stream as examples."""

    name = "tokenize"
    outputs = (Output("examples", "tokenize", EXAMPLE),)

    def __init__(self, cfg: BuildConfig, tok: TextTokenizer, synthetic_ratio: float) -> None:
        self.cfg, self.tok, self.ratio = cfg, tok, synthetic_ratio

    def fingerprint(self) -> Any:
        return [render_fingerprint(self.cfg), self.tok.manifest(), self.ratio]

    def run(self, data: Data, ctx: Context) -> dict[str, Any]:
        parts = [
            map_in_slices(
                data.kept(s).drop_columns(["reject"]),
                render_batch,
                (s, self.cfg, self.ratio),
                RENDER_BATCH_ROWS,
                concurrency=self.cfg.workers,
            )
            for s in STREAMS
            if s in data
        ]
        return {"examples": parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]}
