"""The MM1 model: a ViT image encoder, a C-Abstractor connector and a decoder-only LM.

Read top to bottom: config and presets, the LM pieces (RMSNorm, RoPE, GQA attention, SwiGLU), the
ViT (parameter names follow OpenCLIP's ``visual`` tower so its weights load as they are), the
connectors, the model that scatters image features into the image-slot positions, the loss, and
the FLOP count used for MFU.

Attention never crosses examples: a packed sequence carries ``segment_ids`` (1..k per example,
0 on trailing padding) and ``positions`` (0 at each example start). No path builds a T×T matrix:
on CUDA a FlexAttention ``BlockMask`` skips the blocks outside the block-diagonal; elsewhere
(FlexAttention has no CPU backward in torch 2.13) each example is attended on its own, segments
of equal length batched into one causal SDPA call. A dense boolean-mask SDPA stays as the
reference the other two are tested against (``attention="dense"``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mm1data.errors import UsageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of the three parts; ``vocab_size``, ``image_size``, ``image_tokens`` come from the manifest."""

    vocab_size: int = 0
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 0  # 0: SwiGLU's 8/3 * dim rounded up to a multiple of 64
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    image_size: int = 378
    patch_size: int = 14
    vit_width: int = 32
    vit_depth: int = 2
    vit_heads: int = 2
    vit_mlp_ratio: float = 4.0
    image_tokens: int = 144
    connector: str = "c-abstractor"  # or "avgpool" (ablation)
    connector_depth: int = 1  # ResBlocks before and after the pool
    init_std: float = 0.02
    # "auto": FlexAttention on CUDA, per-segment SDPA elsewhere; "flex", "segments", or "dense"
    # (SDPA under a [B, 1, T, T] mask: the reference, memory grows with T², for tests and benchmarks)
    attention: str = "auto"
    # target tokens per block of logits in the loss (the [targets, vocab] logits are recomputed
    # block by block in the backward pass); 0: all at once, memory grows with targets × vocab
    loss_chunk: int = 256

    @property
    def head_dim(self) -> int:
        """Width of one attention head of the LM."""
        return self.dim // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the SwiGLU MLP."""
        return self.ffn_dim or 64 * math.ceil(8 * self.dim / 3 / 64)

    @property
    def grid(self) -> int:
        """Patches per side of one image (378 / 14 = 27)."""
        return self.image_size // self.patch_size


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    # ViT-B/14 + a ~100M-parameter LM
    "mm1-100m": dict(
        dim=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=4,
        vit_width=768,
        vit_depth=12,
        vit_heads=12,
        connector_depth=3,
    ),
    # ViT-L/14 + a ~1B LM
    "mm1-1b": dict(
        dim=2048,
        n_layers=24,
        n_heads=16,
        n_kv_heads=8,
        ffn_dim=5632,
        vit_width=1024,
        vit_depth=24,
        vit_heads=16,
        connector_depth=3,
    ),
    # ViT-H/14 + a ~3B LM (MM1-3B-like shapes; MM1 uses ViT-H at 378px and 144 image tokens)
    "mm1-3b": dict(
        dim=3072,
        n_layers=28,
        n_heads=24,
        n_kv_heads=8,
        ffn_dim=8192,
        vit_width=1280,
        vit_depth=32,
        vit_heads=16,
        connector_depth=3,
    ),
}


def model_config(preset: str, overrides: dict[str, Any] | None = None, **from_data: Any) -> ModelConfig:
    """A preset's config with ``from_data`` (manifest values) and then user ``overrides`` applied."""
    if preset not in PRESETS:
        raise UsageError(f"unknown model preset {preset!r} (known: {', '.join(PRESETS)})")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise UsageError(f"unknown model field {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    cfg = ModelConfig(**{**PRESETS[preset], **from_data, **(overrides or {})})
    if cfg.dim % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads:
        raise UsageError(
            f"model: dim {cfg.dim}, n_heads {cfg.n_heads}, n_kv_heads {cfg.n_kv_heads} do not divide"
        )
    if cfg.image_size % cfg.patch_size:
        raise UsageError(
            f"model: image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}"
        )
    side = math.isqrt(cfg.image_tokens)
    if side * side != cfg.image_tokens or side > cfg.grid:
        raise UsageError(f"model: image_tokens {cfg.image_tokens} must be a square of at most {cfg.grid}²")
    if cfg.connector not in ("c-abstractor", "avgpool"):
        raise UsageError(f"model: connector must be c-abstractor or avgpool, not {cfg.connector!r}")
    if cfg.attention not in ATTENTION:
        raise UsageError(f"model: attention must be one of {', '.join(ATTENTION)}, not {cfg.attention!r}")
    if cfg.loss_chunk < 0:
        raise UsageError(f"model: loss_chunk must be >= 0, not {cfg.loss_chunk}")
    return cfg


# ---------------------------------------------------------------- attention over packed examples

ATTENTION = ("auto", "flex", "segments", "dense")


@dataclass(frozen=True)
class SegmentLayout:
    """A packed batch's tokens reordered so that segments of equal length lie back to back.

    ``order`` [B·T] lists flat positions (b·T + t) segment by segment, shortest segments first;
    ``inverse`` puts them back; ``groups`` is (segments, length) for each run of equal lengths."""

    order: torch.Tensor
    inverse: torch.Tensor
    groups: tuple[tuple[int, int], ...]


def segment_layout(segment_ids: torch.Tensor) -> SegmentLayout:
    """The :class:`SegmentLayout` of ``segment_ids`` [B, T]: a segment is a run of equal ids in a row
    (the packed-v1 contract: examples 1..k back to back, then padding 0 as one more run)."""
    B, T = segment_ids.shape
    flat = segment_ids.reshape(-1)
    first = torch.ones_like(flat, dtype=torch.bool)
    first[1:] = flat[1:] != flat[:-1]
    first[::T] = True  # every row starts a segment
    starts = first.nonzero().squeeze(1)
    lengths = torch.diff(starts, append=starts.new_tensor([B * T]))
    by_length = torch.argsort(lengths, stable=True)
    starts, lengths = starts[by_length], lengths[by_length]
    # token i of the reordered batch is start(s) + (i - offset(s)) for its segment s
    offsets = torch.cumsum(lengths, 0) - lengths
    order = torch.repeat_interleave(starts - offsets, lengths) + torch.arange(B * T, device=flat.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(B * T, device=flat.device)
    length, count = torch.unique_consecutive(lengths, return_counts=True)
    return SegmentLayout(order, inverse, tuple(zip(count.tolist(), length.tolist(), strict=True)))


def dense_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """The reference: a boolean block-diagonal causal mask [B, 1, T, T] (same segment and k <= q).
    Padding (segment 0) attends only to padding."""
    T = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    return (same & causal)[:, None]


def flex_block_mask(segment_ids: torch.Tensor) -> Any:
    """The same mask as a FlexAttention ``BlockMask``: only blocks on the diagonal are computed."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = segment_ids.shape

    def mask_mod(b, h, q, k):  # noqa: ANN001, ANN202 - FlexAttention's signature
        return (segment_ids[b, q] == segment_ids[b, k]) & (k <= q)

    return create_block_mask(mask_mod, B, None, T, T, device=segment_ids.device)


def document_mask(segment_ids: torch.Tensor, kind: str = "auto") -> Any:
    """What :func:`attend` needs to keep attention inside each example of ``segment_ids`` [B, T]:
    a FlexAttention ``BlockMask`` (``flex``; ``auto`` on CUDA), a :class:`SegmentLayout`
    (``segments``; ``auto`` elsewhere) or the dense reference mask (``dense``)."""
    if kind == "auto":
        kind = "flex" if segment_ids.is_cuda else "segments"
    if kind == "flex":
        return flex_block_mask(segment_ids)
    if kind == "segments":
        return segment_layout(segment_ids)
    if kind == "dense":
        return dense_mask(segment_ids)
    raise UsageError(f"model: attention must be one of {', '.join(ATTENTION)}, not {kind!r}")


@torch.compiler.disable  # its loop depends on the batch's segment lengths: no graph to trace
def attend_segments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout) -> torch.Tensor:
    """Causal attention inside each segment: one SDPA call per group of equal-length segments.

    q [B, H, T, D], k and v [B, Hkv, T, D] (GQA) → [B, H, T, D]; the largest score matrix is one
    group's [segments, H, L, L], never T×T."""
    B, H, T, D = q.shape

    def by_segment(x: torch.Tensor) -> torch.Tensor:  # [B, h, T, D] → [B·T, h, D] in layout order
        return x.transpose(1, 2).reshape(B * T, x.shape[1], D)[layout.order]

    sizes = [n * L for n, L in layout.groups]
    out = []
    for (n, L), *qkv in zip(
        layout.groups, *(by_segment(x).split(sizes) for x in (q, k, v)), strict=True
    ):  # each of q, k, v: [n·L, h, D] → [n, h, L, D]
        y = F.scaled_dot_product_attention(
            *(x.view(n, L, x.shape[1], D).transpose(1, 2) for x in qkv), is_causal=True, enable_gqa=True
        )
        out.append(y.transpose(1, 2).reshape(n * L, H, D))
    return torch.cat(out)[layout.inverse].view(B, T, H, D).transpose(1, 2)


_flex_attention = None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
    """Attention with GQA under a :func:`document_mask` (layout → per-segment SDPA, tensor → masked
    SDPA, BlockMask → FlexAttention)."""
    if isinstance(mask, SegmentLayout):
        return attend_segments(q, k, v, mask)
    if isinstance(mask, torch.Tensor) or mask is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    global _flex_attention
    if _flex_attention is None:
        from torch.nn.attention.flex_attention import flex_attention

        _flex_attention = torch.compile(flex_attention, dynamic=False)
    return _flex_attention(q, k, v, block_mask=mask, enable_gqa=True)


def rope(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [B, 1, T, head_dim] for per-token ``positions`` [B, T] (they reset per example)."""
    inv_freq = theta ** -(
        torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate query/key pairs (rotate-half convention, as Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


# ---------------------------------------------------------------- decoder LM


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Any) -> torch.Tensor:
        """x [B, T, dim] → [B, T, dim]."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        y = attend(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    """The LLaMA MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] → [..., dim]."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm decoder block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.feed_forward = SwiGLU(cfg.dim, cfg.ffn_hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Any) -> torch.Tensor:
        """One residual attention step and one residual MLP step."""
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


# ---------------------------------------------------------------- ViT (OpenCLIP parameter names)


class ViTAttention(nn.Module):
    """Full self-attention with OpenCLIP's ``in_proj_weight``/``out_proj`` names."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, P, width] → [N, P, width]."""
        N, P, W = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(N, P, 3, self.heads, -1).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.out_proj(y.transpose(1, 2).reshape(N, P, W))


class ViTBlock(nn.Module):
    """Pre-LayerNorm transformer block (OpenCLIP ``ResidualAttentionBlock``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = ViTAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, hidden), gelu=nn.GELU(), c_proj=nn.Linear(hidden, width))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual attention then residual MLP."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """ViT with a class token; returns the patch features [N, grid², width] after ``ln_post``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.vit_width
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.grid**2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ViTBlock(w, cfg.vit_heads, cfg.vit_mlp_ratio) for _ in range(cfg.vit_depth)
        )
        self.ln_post = nn.LayerNorm(w)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def patch_embed(self, images: torch.Tensor) -> torch.Tensor:
        """images uint8 [N, H, W, 3] → normalized → patch embeddings [N, grid², width]."""
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype).div_(255.0).sub_(self.mean).div_(self.std)
        return self.conv1(x.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images uint8 [N, H, W, 3] → features [N, grid², width]."""
        if torch.is_grad_enabled() and self.conv1.weight.requires_grad:
            # the float images (4× the uint8 ones) are rebuilt in the backward pass, not kept for it
            x = checkpoint(self.patch_embed, images, use_reentrant=False)
        else:
            x = self.patch_embed(images)
        cls = self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x[:, 1:])


def interpolate_pos_embedding(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a [1 + g², w] class+grid position embedding to [1 + grid², w] (bicubic on the grid)."""
    old = math.isqrt(pos.shape[0] - 1)
    if old == grid:
        return pos
    patches = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1].float(), patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)]).to(pos.dtype)


def _from_hf_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Hugging Face ``CLIPVisionModel`` keys to OpenCLIP ``visual`` names (q/k/v fused)."""
    out: dict[str, torch.Tensor] = {}
    pre = "vision_model."
    sd = {k[k.index(pre) + len(pre) :]: v for k, v in sd.items() if pre in k}
    out["conv1.weight"] = sd["embeddings.patch_embedding.weight"]
    out["class_embedding"] = sd["embeddings.class_embedding"]
    out["positional_embedding"] = sd["embeddings.position_embedding.weight"]
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = sd[f"{theirs}.{p}"]
    i = 0
    while f"encoder.layers.{i}.self_attn.q_proj.weight" in sd:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            qkv = [sd[f"{src}self_attn.{n}_proj.{p}"] for n in "qkv"]
            out[f"{dst}attn.in_proj_{p}"] = torch.cat(qkv)
            out[f"{dst}attn.out_proj.{p}"] = sd[f"{src}self_attn.out_proj.{p}"]
            out[f"{dst}ln_1.{p}"] = sd[f"{src}layer_norm1.{p}"]
            out[f"{dst}ln_2.{p}"] = sd[f"{src}layer_norm2.{p}"]
            out[f"{dst}mlp.c_fc.{p}"] = sd[f"{src}mlp.fc1.{p}"]
            out[f"{dst}mlp.c_proj.{p}"] = sd[f"{src}mlp.fc2.{p}"]
        i += 1
    return out


def load_vision_weights(vit: VisionTransformer, path: str | Path) -> list[str]:
    """Load CLIP ViT weights from a local ``.safetensors`` or state-dict file into ``vit``.

    Accepts OpenCLIP names (with or without the ``visual.`` prefix) and Hugging Face
    ``CLIPVisionModel`` names; the position embedding is interpolated to this ViT's grid. Keys of
    the file that this ViT has no use for (text tower, ``visual.proj``) are ignored; returns them.
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"vision weights not found: {path}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if any("vision_model." in k for k in sd):
        sd = _from_hf_clip(sd)
    elif any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    own = vit.state_dict()
    missing = sorted(set(own) - set(sd))
    if missing:
        raise UsageError(f"vision weights {path}: missing {missing[0]} (and {len(missing) - 1} more)")
    grid = math.isqrt(own["positional_embedding"].shape[0] - 1)
    sd = dict(sd, positional_embedding=interpolate_pos_embedding(sd["positional_embedding"], grid))
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        raise UsageError(
            f"vision weights {path}: {bad[0]} is {tuple(sd[bad[0]].shape)}, want {tuple(own[bad[0]].shape)}"
        )
    vit.load_state_dict({k: sd[k] for k in own})
    return sorted(set(sd) - set(own))


# ---------------------------------------------------------------- connectors


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [N, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize each pixel's channel vector."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """Residual bottleneck (1×1 → 3×3 → 1×1, LayerNorm2d, SiLU), as in Honeybee's C-Abstractor."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False),
            LayerNorm2d(c),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            LayerNorm2d(c),
            nn.SiLU(),
            nn.Conv2d(c, c, 1, bias=False),
            LayerNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + body(x), then SiLU."""
        return F.silu(x + self.body(x))


class Connector(nn.Module):
    """ViT patch features [N, grid², w] → ``image_tokens`` LM embeddings [N, image_tokens, dim].

    ``c-abstractor``: ResBlocks → adaptive average pool to √image_tokens per side → ResBlocks →
    MLP projection. ``avgpool``: the pool and the projection only (the MM1 ablation baseline).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, side = cfg.vit_width, math.isqrt(cfg.image_tokens)
        depth = cfg.connector_depth if cfg.connector == "c-abstractor" else 0
        self.pre = nn.Sequential(*(ResBlock(c) for _ in range(depth)))
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.post = nn.Sequential(*(ResBlock(c) for _ in range(depth)))
        self.proj = nn.Sequential(nn.Linear(c, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Abstract a square patch grid into fewer tokens and project them to the LM width."""
        N, P, C = feats.shape
        g = math.isqrt(P)
        x = self.post(self.pool(self.pre(feats.transpose(1, 2).reshape(N, C, g, g))))
        return self.proj(x.flatten(2).transpose(1, 2))


# ---------------------------------------------------------------- the model


class MM1(nn.Module):
    """ViT → connector → image features scattered into the image slots of the token embeddings → LM."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise UsageError("model: vocab_size must be set (it comes from the manifest)")
        self.cfg = cfg
        self.vision = VisionTransformer(cfg)
        self.connector = Connector(cfg)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases, output projections scaled by 1/√(2·layers)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name or name.endswith("class_embedding"):
                continue
            scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0
            nn.init.normal_(p, std=std * scale)

    def lm_parameters(self) -> int:
        """Parameter count of the decoder LM (embeddings included): the N of MM1's LR fit."""
        parts = [self.tok_embeddings, self.layers, self.norm] + (
            [self.output] if self.output is not None else []
        )
        return sum(p.numel() for m in parts for p in m.parameters())

    def embed(self, tokens: torch.Tensor, images: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, dim] with each image's features written over its slot.

        ``images`` uint8 [N, H, W, 3]; ``image_index`` [N] the flat position (b·T + slot_start) of
        each image's first slot token."""
        h = self.tok_embeddings(tokens)
        if images.shape[0] == 0:
            return h
        B, T, D = h.shape
        feats = self.connector(self.vision(images))  # [N, image_tokens, D]
        index = (image_index[:, None] + torch.arange(feats.shape[1], device=h.device)).flatten()
        return h.reshape(B * T, D).index_copy(0, index, feats.reshape(-1, D).to(h.dtype)).view(B, T, D)

    def hidden(self, h: torch.Tensor, positions: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        """Run the decoder over embeddings h [B, T, dim]; returns final-norm hidden states."""
        cos, sin = rope(positions, self.cfg.head_dim, self.cfg.rope_theta)
        mask = document_mask(segment_ids, self.cfg.attention)
        for layer in self.layers:
            h = layer(h, cos.to(h.dtype), sin.to(h.dtype), mask)
        return self.norm(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of hidden states (tied or untied head), in float32."""
        w = self.tok_embeddings.weight if self.output is None else self.output.weight
        return F.linear(h, w).float()

    def forward(self, batch: dict[str, torch.Tensor], z_loss: float = 0.0) -> dict[str, torch.Tensor]:
        """Per-target losses of a packed batch; see :func:`next_token_losses`."""
        h = self.embed(batch["tokens"], batch["images"], batch["image_index"])
        h = self.hidden(h, batch["positions"], batch["segment_ids"])
        return next_token_losses(self, h, batch, z_loss)

    def flops(
        self, loss_tokens: int, total_tokens: int, segment_sq: int, images: int, train_vision: bool
    ) -> float:
        """Training FLOPs (forward + backward = 3× forward) of one batch: ViT + connector + LM.

        LM matmuls 6·N·tokens, attention 6·layers·dim·Σ Lₛ² (causal, per segment), head
        6·dim·vocab per loss token; ViT 6·N·P + 12·depth·w·P² per image (2 and 4 when frozen: no
        backward); connector convolutions and projection per image."""
        c = self.cfg
        lm_matmul = sum(p.numel() for p in self.layers.parameters() if p.ndim == 2)
        flops = 6 * lm_matmul * total_tokens + 6 * c.n_layers * c.dim * segment_sq
        flops += 6 * c.dim * c.vocab_size * loss_tokens
        P = c.grid**2 + 1
        vit_matmul = sum(p.numel() for p in self.vision.parameters() if p.ndim >= 2)
        vision = 2 * vit_matmul * P + 4 * c.vit_depth * c.vit_width * P * P
        side2 = c.image_tokens
        block = 2 * c.vit_width**2 * 11  # 1×1 + 3×3 + 1×1 convolutions per pixel
        conn = c.connector_depth * block * (c.grid**2 + side2) if c.connector == "c-abstractor" else 0
        conn += 2 * (c.vit_width * c.dim + c.dim * c.dim) * side2
        return flops + images * (3 * conn + (3 if train_vision else 1) * vision)


def target_mask(loss_mask: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, T-1] bool: position t is trained to predict token t+1 (a masked-in target of the same example)."""
    seg = segment_ids
    return loss_mask[:, 1:].bool() & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Σ cross-entropy + z·Σ logsumexp² of ``targets`` under the head ``weight``, ``chunk`` targets at a time.

    The gradient is worked out in the forward pass, block by block ((1 + 2z·lse)·softmax − onehot,
    then through the head's matmul), so no [targets, vocab] block outlives its turn: memory is
    O(chunk × vocab), and each block is one matmul, one log-softmax and two gradient matmuls (the
    autograd path keeps every logit and walks them twice more). Under autocast the matmuls run in
    its dtype, like ``F.linear``; the weight's gradient is accumulated in float32."""

    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, z_loss: float, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, per-target CE, per-target logsumexp) of hidden states h [n, dim] and targets [n]."""
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        n = len(targets)
        ce = torch.empty(n, dtype=torch.float32, device=h.device)
        lse = torch.empty_like(ce)
        grad_h = torch.empty(h.shape, dtype=dtype, device=h.device) if grads else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if grads else None
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            for i in range(0, n, chunk):
                x, t = h[i : i + chunk].to(dtype), targets[i : i + chunk, None]
                logits = F.linear(x, w).float()
                logp = torch.log_softmax(logits, dim=-1)
                ce[i : i + chunk] = -logp.gather(1, t).squeeze(1)
                lse[i : i + chunk] = logits.gather(1, t).squeeze(1) + ce[i : i + chunk]
                del logits
                if grads:
                    g = logp.exp_()  # softmax, in place
                    if z_loss:
                        g.mul_(1 + 2 * z_loss * lse[i : i + chunk, None])
                    g.scatter_add_(1, t, torch.full_like(t, -1, dtype=g.dtype))
                    g = g.to(dtype)
                    grad_h[i : i + chunk] = g @ w
                    grad_w.add_(g.t() @ x)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.mark_non_differentiable(ce, lse)
        loss = ce.sum() + z_loss * (lse**2).sum() if z_loss else ce.sum()
        return loss, ce, lse

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple:
        """The gradients worked out in the forward pass, scaled by the loss's incoming gradient."""
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss, None, None, None


def next_token_losses(
    model: MM1, h: torch.Tensor, batch: dict[str, torch.Tensor], z_loss: float = 0.0
) -> dict[str, torch.Tensor]:
    """Cross-entropy of each target token (summed, not averaged: the caller divides by the global count).

    Position t predicts token t+1 when ``loss_mask[t+1]`` is set and both lie in the same example
    (a segment never predicts the next one's first token). Logits are computed only at those
    positions, ``cfg.loss_chunk`` targets at a time (:class:`ChunkedCrossEntropy`; 0: all at once
    through autograd, the reference). Returns ``loss`` (ce_sum + z_loss·z_sum, the one to
    differentiate), ``ce_sum``, ``z_sum`` (Σ logsumexp²), per-target ``ce`` and the targets'
    ``stream`` ids."""
    valid = target_mask(batch["loss_mask"], batch["segment_ids"])
    hidden, targets = h[:, :-1][valid], batch["tokens"][:, 1:][valid]
    if model.cfg.loss_chunk:
        w = model.tok_embeddings.weight if model.output is None else model.output.weight
        loss, ce, lse = ChunkedCrossEntropy.apply(hidden, w, targets, z_loss, model.cfg.loss_chunk)
    else:
        logits = model.logits(hidden)
        lse = torch.logsumexp(logits, dim=-1)
        ce = lse - logits.gather(1, targets[:, None]).squeeze(1)  # cross-entropy, sharing the logsumexp
        loss = ce.sum() + z_loss * (lse**2).sum() if z_loss else ce.sum()
    return {
        "ce": ce.detach(),
        "stream": batch["stream_ids"][:, 1:][valid],
        "ce_sum": ce.sum(),
        "z_sum": (lse**2).sum(),
        "loss": loss,
    }
