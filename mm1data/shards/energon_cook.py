"""An Energon cooker for ``mm1data/packed-v1`` samples (optional: needs ``megatron-energon``).

A build's ``.nv-meta/dataset.yaml`` declares a crude dataset, so Energon hands each sample to a
cooker as a dict of its members (decoded by Energon's default decoder: ``.npy`` → arrays,
``json`` → dict, ``.jpg`` → float CHW tensors; raw bytes work too). :func:`cook_packed` turns it
into a :class:`PackedSequence` of tensors; :data:`COOKER` selects the samples by their subflavor.
A Megatron-style task encoder only has to list it::

    from megatron.energon import DefaultTaskEncoder, get_train_dataset, get_loader, WorkerConfig
    from mm1data.shards.energon_cook import COOKER, PackedSequence

    class PackedEncoder(DefaultTaskEncoder[PackedSequence, PackedSequence, dict, dict]):
        cookers = [COOKER]

    ds = get_train_dataset("/data/mm1-v1", worker_config=WorkerConfig.default_worker_config(),
                           batch_size=None, shuffle_buffer_size=None, max_samples_per_sequence=None,
                           task_encoder=PackedEncoder())
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from megatron.energon import Cooker, Sample, basic_sample_keys, stateless
from megatron.energon.edataclass import edataclass
from PIL import Image

from mm1data.shards.energon import SUBFLAVORS
from mm1data.shards.format import ARRAYS, META, image_member, load_array


@edataclass
class PackedSequence(Sample):
    """One packed sequence as tensors, ready for a decoder LM with image slots."""

    tokens: torch.Tensor  # int64 [seq_len]
    segment_ids: torch.Tensor  # int32 [seq_len]: 1..k per example, 0 on padding
    positions: torch.Tensor  # int32 [seq_len]: 0 at each example start
    loss_mask: torch.Tensor  # uint8 [seq_len]: 1 on prediction targets
    images: torch.Tensor  # uint8 [n_images, 3, S, S], in slot order
    image_slots: torch.Tensor  # int64 [n_images]: first token of each image's slot
    examples: list[dict[str, Any]]  # the json member's examples (stream, id, lineage, span, images)


def _array(value: Any, member: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype != ARRAYS[member]:
            raise ValueError(f"{member}: {value.dtype}{list(value.shape)}, expected 1-D {ARRAYS[member]}")
        return value
    return load_array(value, member)


def _image(value: Any) -> torch.Tensor:
    """uint8 [3, S, S] from Energon's decoded image (float CHW in [0, 1]) or JPEG bytes."""
    if isinstance(value, torch.Tensor):
        t = value if value.dtype == torch.uint8 else (value * 255).round().clamp(0, 255).to(torch.uint8)
        return t if t.shape[0] == 3 else t.permute(2, 0, 1)
    with Image.open(io.BytesIO(value)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).contiguous()


@stateless
def cook_packed(sample: dict) -> PackedSequence:
    """A crude packed-v1 sample (member name → decoded value or bytes) → :class:`PackedSequence`."""
    meta = sample[META]
    meta = json.loads(meta) if isinstance(meta, bytes | str) else meta
    arrays = {m.removesuffix(".npy"): _array(sample[m], m) for m in ARRAYS}
    images = [_image(sample[image_member(i)]) for i in range(len(meta["images"]))]
    size = images[0].shape[1:] if images else (0, 0)
    return PackedSequence(
        **basic_sample_keys(sample),
        tokens=torch.from_numpy(arrays["tokens"].astype(np.int64)),
        segment_ids=torch.from_numpy(arrays["segment_ids"].copy()),
        positions=torch.from_numpy(arrays["positions"].copy()),
        loss_mask=torch.from_numpy(arrays["loss_mask"].copy()),
        images=torch.stack(images) if images else torch.empty((0, 3, *size), dtype=torch.uint8),
        image_slots=torch.tensor([im["slot_start"] for im in meta["images"]], dtype=torch.int64),
        examples=meta["examples"],
    )


COOKER = Cooker(cook_packed, has_subflavors=dict(SUBFLAVORS))
"""The cooker for every sample of an mm1data build (matched by the ``mm1data_format`` subflavor)."""
