"""The MM1 model: packing never leaks across examples, vision weights load, presets have their sizes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mm1data.errors import UsageError
from mm1data.train.data import PackedDataset, ShardReader, collate, open_dataset
from mm1data.train.model import (
    MM1,
    ModelConfig,
    VisionTransformer,
    load_vision_weights,
    model_config,
    next_token_losses,
)


def _model(ds: PackedDataset, **overrides: object) -> MM1:
    torch.manual_seed(0)
    # a large init spreads the logits, so any mixing across examples would change them visibly
    cfg = model_config(
        "tiny",
        {"init_std": 0.2, **overrides},
        vocab_size=ds.vocab_size,
        image_size=ds.image_size,
        image_tokens=ds.image_tokens,
    )
    return MM1(cfg).eval()


def _sample_with_images(ds: PackedDataset) -> dict:
    reader = ShardReader(ds)
    for i in range(ds.shards[0].sequences):
        s = reader.read(0, i)
        if len(s["meta"]["examples"]) >= 3 and s["meta"]["images"]:
            return s
    raise AssertionError("no packed sequence with 3 examples and an image")


def _alone(sample: dict, e: int) -> dict:
    """Example ``e`` of a packed sample as a sequence of its own (segment 1, its own images)."""
    ex = sample["meta"]["examples"][e]
    s, t = ex["span"]
    images = [sample["meta"]["images"][i] for i in ex["images"]]
    return {
        "tokens": sample["tokens"][s:t],
        "positions": sample["positions"][s:t],
        "loss_mask": sample["loss_mask"][s:t],
        "segment_ids": np.ones(t - s, np.int32),
        "jpegs": [sample["jpegs"][i] for i in ex["images"]],
        "meta": {
            "examples": [dict(ex, span=[0, t - s])],
            "images": [dict(im, slot_start=im["slot_start"] - s) for im in images],
        },
        "key": f"{sample['key']}/{e}",
    }


def test_packed_loss_equals_examples_run_one_by_one(packed_dataset: Path) -> None:
    ds = open_dataset(str(packed_dataset))
    model = _model(ds)
    sample = _sample_with_images(ds)
    with torch.no_grad():
        packed = model(collate([sample], ds.streams, ds.image_size))
        alone = [
            model(collate([_alone(sample, e)], ds.streams, ds.image_size))
            for e in range(len(sample["meta"]["examples"]))
        ]
    per_target = torch.cat([a["ce"] for a in alone])
    assert per_target.shape == packed["ce"].shape
    torch.testing.assert_close(packed["ce"], per_target, atol=1e-5, rtol=0)
    # the packed token-mean is the token-weighted mean of the examples' losses
    n = torch.tensor([len(a["ce"]) for a in alone], dtype=torch.float64)
    weighted = sum(float(a["ce_sum"]) for a in alone) / float(n.sum())
    assert abs(float(packed["ce_sum"]) / len(packed["ce"]) - weighted) < 1e-5
    assert float(packed["ce"].std()) > 0.1  # the logits are far from uniform: the check has teeth


def test_gradients_of_one_example_do_not_reach_another(packed_dataset: Path) -> None:
    ds = open_dataset(str(packed_dataset))
    model = _model(ds)
    sample = _sample_with_images(ds)
    batch = collate([sample], ds.streams, ds.image_size)
    s, t = sample["meta"]["examples"][1]["span"]
    only_second = dict(batch, loss_mask=batch["loss_mask"].clone())
    only_second["loss_mask"][:, :s] = 0
    only_second["loss_mask"][:, t:] = 0
    h = model.embed(batch["tokens"], batch["images"], batch["image_index"]).detach().requires_grad_()
    next_token_losses(model, model.hidden(h, batch["positions"], batch["segment_ids"]), only_second)[
        "loss"
    ].backward()
    grad = h.grad[0].abs().sum(-1)
    assert torch.all(grad[:s] == 0) and torch.all(grad[t:] == 0)
    assert torch.all(grad[s : t - 1] > 0)

    def param_grads(b: dict) -> list[torch.Tensor]:
        model.zero_grad()
        model(b)["loss"].backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]

    # other examples' tokens and images changed: the second example's gradients stay the same
    other = dict(only_second, tokens=only_second["tokens"].clone(), images=255 - only_second["images"])
    mask = torch.ones_like(other["tokens"], dtype=torch.bool)
    mask[:, s:t] = False
    other["tokens"][mask] = torch.randint(0, 1000, (int(mask.sum()),))
    owned = [i for i in sample["meta"]["examples"][1]["images"]]
    other["images"][owned] = only_second["images"][owned]
    for a, b in zip(param_grads(only_second), param_grads(other), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("connector", ["c-abstractor", "avgpool"])
def test_connector_turns_patches_into_image_tokens(connector: str) -> None:
    cfg = model_config("tiny", {"connector": connector}, vocab_size=100, image_size=84, image_tokens=9)
    feats = MM1(cfg).connector(torch.randn(2, cfg.grid**2, cfg.vit_width))
    assert feats.shape == (2, 9, cfg.dim)


def _hf_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (OpenCLIP) ViT names written the Hugging Face CLIPVisionModel way."""
    p = "vision_model."
    out = {
        p + "embeddings.patch_embedding.weight": sd["conv1.weight"],
        p + "embeddings.class_embedding": sd["class_embedding"],
        p + "embeddings.position_embedding.weight": sd["positional_embedding"],
    }
    for x in ("weight", "bias"):
        out[f"{p}pre_layrnorm.{x}"], out[f"{p}post_layernorm.{x}"] = sd[f"ln_pre.{x}"], sd[f"ln_post.{x}"]
        i = 0
        while f"transformer.resblocks.{i}.ln_1.{x}" in sd:
            src, dst = f"transformer.resblocks.{i}.", f"{p}encoder.layers.{i}."
            for name, part in zip("qkv", sd[f"{src}attn.in_proj_{x}"].chunk(3), strict=True):
                out[f"{dst}self_attn.{name}_proj.{x}"] = part
            out[f"{dst}self_attn.out_proj.{x}"] = sd[f"{src}attn.out_proj.{x}"]
            out[f"{dst}layer_norm1.{x}"], out[f"{dst}layer_norm2.{x}"] = (
                sd[f"{src}ln_1.{x}"],
                sd[f"{src}ln_2.{x}"],
            )
            out[f"{dst}mlp.fc1.{x}"], out[f"{dst}mlp.fc2.{x}"] = (
                sd[f"{src}mlp.c_fc.{x}"],
                sd[f"{src}mlp.c_proj.{x}"],
            )
            i += 1
    return out


def test_clip_vision_weights_load_with_position_interpolation(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    base = ModelConfig(vocab_size=10, image_size=56, image_tokens=4)
    torch.manual_seed(1)
    src = VisionTransformer(base)
    for p in src.parameters():
        torch.nn.init.normal_(p)
    sd = src.state_dict()
    openclip = {f"visual.{k}": v for k, v in sd.items()} | {
        "visual.proj": torch.zeros(32, 8),
        "text.x": torch.ones(1),
    }
    torch.save(openclip, tmp_path / "open_clip.pt")
    save_file({k: v.contiguous() for k, v in _hf_names(sd).items()}, str(tmp_path / "hf.safetensors"))

    same = VisionTransformer(base)
    assert load_vision_weights(same, tmp_path / "hf.safetensors") == []
    for k, v in same.state_dict().items():
        assert torch.equal(v, sd[k]), k
    images = torch.randint(0, 256, (1, 56, 56, 3), dtype=torch.uint8)
    torch.testing.assert_close(same(images), src(images))

    bigger = VisionTransformer(dataclasses.replace(base, image_size=84))  # 4×4 → 6×6 patches
    assert load_vision_weights(bigger, tmp_path / "open_clip.pt") == ["proj"]
    pos = bigger.positional_embedding
    assert pos.shape == (37, 32) and torch.equal(pos[0], sd["positional_embedding"][0])
    assert torch.equal(bigger.conv1.weight, sd["conv1.weight"])
    assert bigger(torch.zeros(1, 84, 84, 3, dtype=torch.uint8)).shape == (1, 36, 32)

    with pytest.raises(UsageError, match="missing"):
        torch.save({"visual.conv1.weight": sd["conv1.weight"]}, tmp_path / "partial.pt")
        load_vision_weights(VisionTransformer(base), tmp_path / "partial.pt")


@pytest.mark.parametrize(
    ("preset", "low", "high"),
    [("mm1-100m", 0.09e9, 0.15e9), ("mm1-1b", 1.0e9, 1.6e9), ("mm1-3b", 2.7e9, 3.6e9)],
)
def test_presets_have_their_lm_sizes(preset: str, low: float, high: float) -> None:
    with torch.device("meta"):
        model = MM1(model_config(preset, vocab_size=50_261, image_size=378, image_tokens=144))
    assert low < model.lm_parameters() < high
    assert model.cfg.grid == 27


def test_bad_model_settings_fail_with_one_line() -> None:
    with pytest.raises(UsageError, match="unknown model preset"):
        model_config("mm1-7b", vocab_size=10)
    with pytest.raises(UsageError, match="unknown model field 'width'"):
        model_config("tiny", {"width": 3}, vocab_size=10)
    with pytest.raises(UsageError, match="image_tokens 10 must be a square"):
        model_config("tiny", vocab_size=10, image_size=56, image_tokens=10)


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_chunked_cross_entropy_equals_the_autograd_reference(packed_dataset: Path, z_loss: float) -> None:
    ds = open_dataset(str(packed_dataset))
    reader = ShardReader(ds)
    batch = collate([reader.read(0, i) for i in range(4)], ds.streams, ds.image_size)

    def run(loss_chunk: int) -> tuple[dict, list[torch.Tensor]]:
        model = _model(ds, loss_chunk=loss_chunk)
        out = model(batch, z_loss=z_loss)
        (out["loss"] * 0.37).backward()
        return out, [p.grad for p in model.parameters()]

    (ref, ref_grads), (chunked, grads) = run(0), run(7)  # 7: many blocks, the last one partial
    assert len(ref["ce"]) > 7 * 10 and len(ref["ce"]) % 7
    torch.testing.assert_close(chunked["ce"], ref["ce"], atol=1e-5, rtol=0)
    for key in ("loss", "ce_sum", "z_sum"):
        torch.testing.assert_close(chunked[key], ref[key], atol=1e-3, rtol=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
