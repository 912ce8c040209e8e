"""``thumbnail``: the image itself, averaged down to a few pixels.

A representation whose content is known exactly: the mean colour of each cell of a
coarse grid. It keeps colours and layout and discards everything finer (shape,
edges, texture), so RCDM samples conditioned on it show what "keeps the layout,
invents the details" looks like, and it is a floor that a learned representation
should beat. It has no weights, needs no download, and is the offline demo's encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rcdm_cli.plugin import BuildRequest, EncoderSpec, Layer, Preprocessing, UsageError, hookimpl

# Cells per side of each layer's grid.
GRIDS = {"backbone": 4, "8x8": 8, "2x2": 2}


class Thumbnail(nn.Module):
    """Average pooling of the normalised image onto a ``k`` x ``k`` grid, flattened
    channel by channel (3 * k * k values). Differentiable, with no parameters."""

    def forward(self, x: torch.Tensor, layer: str = "backbone") -> torch.Tensor:
        k = GRIDS[layer]
        return F.adaptive_avg_pool2d(x, k).flatten(1)


def build(request: BuildRequest) -> nn.Module:
    if request.weights_path is not None:
        raise UsageError("the thumbnail encoder has no weights: drop --weights")
    return Thumbnail()


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="thumbnail",
            description="the image averaged onto a coarse grid: keeps colour and layout only (no weights; a baseline)",
            build=build,
            layers={
                "backbone": Layer(48, "mean colour of each cell of a 4x4 grid"),
                "8x8": Layer(192, "mean colour of each cell of an 8x8 grid"),
                "2x2": Layer(12, "mean colour of each quarter of the image"),
            },
            preprocessing=Preprocessing("thumbnail", size=64, resize="adm", resize_to=None, mean=(0.5,) * 3, std=(0.5,) * 3),
        )
    )
