"""The demo's pictures: the same held-out scenes beside the samples of every
representation, and interpolation strips, one row per representation."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from rcdm_cli.imaging import make_grid, to_pil


def _from_array(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))


def side_by_side(inputs: np.ndarray, samples: Sequence[torch.Tensor], labels: Sequence[str], rows: int) -> Image.Image:
    """One row per scene: the scene as the models see it, then each representation's
    samples of it, so that what one representation keeps and another drops is seen
    along the row. ``inputs`` is (N, H, W, 3) in [0, 1]; each of ``samples`` is (N, K,
    3, H, W) in [-1, 1]."""
    k = samples[0].shape[1]
    tiles, names = [], []
    for j in range(min(rows, len(inputs))):
        tiles.append(_from_array(inputs[j]))
        names.append("scene")
        for label, block in zip(labels, samples):
            tiles += [to_pil(block[j, s]) for s in range(k)]
            names += [f"{label} {s + 1}" for s in range(k)]
    return make_grid(tiles, names, columns=1 + k * len(samples))


def strips(ends: tuple[np.ndarray, np.ndarray], frames: Sequence[torch.Tensor], labels: Sequence[str]) -> Image.Image:
    """Interpolation strips between two scenes, one row per representation: scene A,
    the frames (the same noise in each), scene B."""
    count = frames[0].shape[0]
    tiles, names = [], []
    for label, row in zip(labels, frames):
        tiles.append(_from_array(ends[0]))
        names.append("A")
        tiles += [to_pil(f) for f in row]
        names += [label if i == 0 else f"{i / (count - 1):.2f}" for i in range(count)]
        tiles.append(_from_array(ends[1]))
        names.append("B")
    return make_grid(tiles, names, columns=count + 2)
