"""How much an encoder's representation moves under each augmentation, per layer:
the paper's finding is that the projector head is invariant to the training
augmentations while the backbone is not."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rcdm_cli.encoders import Encoder
from rcdm_cli.evaluation.augmentations import AUGMENTATIONS, Augmentation
from rcdm_cli.pipeline.sampling import stream_seed

AUGMENT_TAG = 11


def augmented(image: Image.Image, aug: Augmentation, seed: int, index: int) -> Image.Image:
    rng = np.random.default_rng(stream_seed(seed, AUGMENT_TAG, index, list(AUGMENTATIONS).index(aug.name)))
    return aug.apply(image, rng)


def invariance(
    images: list[Image.Image],
    encoder: Encoder,
    layers: list[str],
    augmentations: list[str],
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """{augmentation: {layer: {"mean": ..., "std": ...}}} of the cosine similarity
    between each image's representation and its augmented view's."""
    clean = {layer: encoder.encode(images, layer) for layer in layers}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for a, name in enumerate(augmentations):
        aug = AUGMENTATIONS[name]
        views = [augmented(im, aug, seed, i) for i, im in enumerate(images)]
        out[name] = {}
        for layer in layers:
            sims = F.cosine_similarity(clean[layer].double(), encoder.encode(views, layer).double(), dim=1)
            out[name][layer] = {"mean": float(sims.mean()), "std": float(sims.std()) if len(sims) > 1 else 0.0}
        if progress is not None:
            progress(a + 1, len(augmentations))
    return out
