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
from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.augmentations import AUGMENTATIONS, Augmentation
from rcdm_cli.seeding import stream_seed

AUGMENT_TAG = 11


def augmented(image: Image.Image, aug: Augmentation, seed: int, index: int) -> Image.Image:
    rng = np.random.default_rng(stream_seed(seed, AUGMENT_TAG, index, list(AUGMENTATIONS).index(aug.name)))
    return aug.apply(image, rng)


def _encode(
    images: list[Image.Image],
    encoder: Encoder,
    layers: list[str],
    batch_size: int,
    view: Callable[[Image.Image, int], Image.Image] | None = None,
    done: Callable[[int], None] = lambda count: None,
) -> dict[str, torch.Tensor]:
    """Every layer's representation of ``images`` (or of ``view(image, index)``),
    ``batch_size`` images per network call; each batch is made and prepared once and
    run through every layer, so only one batch of views is held at a time.
    ``done(count)`` follows each batch."""
    rows: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if view is not None:
            batch = [view(im, start + i) for i, im in enumerate(batch)]
        x = encoder.prepare(batch)
        with torch.no_grad():
            for layer in layers:
                rows[layer].append(encoder(x, layer).cpu())
        done(len(batch))
    return {layer: torch.cat(parts) for layer, parts in rows.items()}


def invariance(
    images: list[Image.Image],
    encoder: Encoder,
    layers: list[str],
    augmentations: list[str],
    seed: int = 0,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """{augmentation: {layer: {"mean": ..., "std": ...}}} of the cosine similarity
    between each image's representation and its augmented view's.
    ``progress(done, total)`` counts the images encoded, the originals and every
    augmentation's views: (1 + augmentations) x images in all."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    total = len(images) * (1 + len(augmentations))
    encoded = 0

    def done(count: int) -> None:
        nonlocal encoded
        encoded += count
        if progress is not None:
            progress(encoded, total)

    clean = _encode(images, encoder, layers, batch_size, done=done)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in augmentations:
        aug = AUGMENTATIONS[name]
        views = _encode(images, encoder, layers, batch_size, lambda im, i, aug=aug: augmented(im, aug, seed, i), done)
        out[name] = {}
        for layer in layers:
            sims = F.cosine_similarity(clean[layer].double(), views[layer].double(), dim=1)
            out[name][layer] = {"mean": float(sims.mean()), "std": float(sims.std()) if len(sims) > 1 else 0.0}
    return out


def invariance_record(
    encoder: Encoder, layers: list[str], augmentations: list[str], images: int, seed: int, table: dict
) -> dict:
    """The results record of :func:`invariance`'s ``table``."""
    return {
        "metric": "invariance",
        "encoder": encoder.name,
        "weights": encoder.weights_id,
        "preprocessing": encoder.preprocessing.to_dict(),
        "layers": layers,
        "images": images,
        "seed": seed,
        "similarity": table,
        "trained_augmentations": [a for a in augmentations if AUGMENTATIONS[a].trained],
    }
