"""The packed-v1 members in the terms of Hugging Face ``datasets`` and Ray Data's WebDataset readers.

Both readers read the shards as they are; what they need is told, not converted:

- ``datasets.load_dataset("webdataset", ...)`` infers its schema from the first five samples and
  refuses shards whose samples differ in members, and a sequence holds 0 to ``max_images`` images.
  :func:`hf_features` gives the schema (every member of the contract, ``imgNNN.jpg`` up to
  ``max_images`` as ``Image``, missing ones ``None``).
- ``ray.data.read_webdataset`` builds tensor columns from the first samples and fails on a column
  that is missing in some rows (``img001.jpg`` of a one-image sequence). :func:`ray_decode`, passed
  as its ``decoder``, turns a sample's members into the contract's checked arrays, the ``json``
  text and one ``images`` array ``[n, S, S, 3]`` uint8 in slot order.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from mm1data.shards.format import ARRAYS, IMAGE_MEMBER, META, image_member, load_array


def hf_features(max_images: int) -> Any:
    """``datasets.Features`` of a packed-v1 shard whose sequences hold at most ``max_images`` images
    (the manifest's ``max_images``)."""
    import datasets

    features: dict[str, Any] = {m: datasets.List(datasets.Value(dt.name)) for m, dt in ARRAYS.items()}
    features[META] = datasets.Json()
    features |= {image_member(i): datasets.Image() for i in range(max_images)}
    features |= {"__key__": datasets.Value("string"), "__url__": datasets.Value("string")}
    return datasets.Features(features)


def ray_decode(sample: dict[str, Any]) -> dict[str, Any]:
    """A ``read_webdataset`` decoder: ``.npy`` members → their checked 1-D arrays, ``json`` → its text,
    ``imgNNN.jpg`` → one ``images`` array ``[n, S, S, 3]`` uint8 (``[0, 0, 0, 3]`` without images)."""
    from PIL import Image

    out = {k: v for k, v in sample.items() if k.startswith("__")}
    out |= {m: load_array(sample[m], m) for m in ARRAYS}
    out[META] = bytes(sample[META]).decode("utf-8")
    names = sorted(k for k in sample if IMAGE_MEMBER.match(k))
    images = []
    for name in names:
        with Image.open(io.BytesIO(sample[name])) as im:
            images.append(np.asarray(im.convert("RGB")))
    out["images"] = np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)
    return out
