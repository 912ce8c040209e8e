"""A built encoder: frozen, in eval mode, differentiable with respect to its input.

It takes images in [0, 1] at its input size and normalises them itself, so attacks
(which work on [0, 1] images) and gradient-based analyses need no knowledge of its
statistics. Its preprocessing can be switched, e.g. to the released RCDM models'
[-1, 1] scaling, without rebuilding it.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from PIL import Image
from torch import nn

from rcdm_cli.encoders.spec import EncoderSpec, Layer, WeightSource, as_layers
from rcdm_cli.errors import UsageError
from rcdm_cli.preprocessing import Preprocessing


class UnknownLayer(UsageError):
    """A layer the encoder does not have; a caller that can do without the layer's
    width (it is checked again later) catches this one alone."""


def unknown_layer(name: str, layer: str, layers: Iterable[str]) -> UnknownLayer:
    return UnknownLayer(f"encoder {name!r} has no layer {layer!r}; it has: {', '.join(layers)}")


class Encoder(nn.Module):
    def __init__(
        self,
        spec: EncoderSpec,
        network: nn.Module,
        *,
        name: str,
        layers: Mapping[str, Layer],
        preprocessing: Preprocessing,
        native_preprocessing: Preprocessing,
        source: WeightSource | None,
        weights_file: str | None,
        plugin: str,
    ):
        super().__init__()
        self.spec = spec
        self.name = name
        self.network = network
        self.layers = as_layers(layers)
        self.native_preprocessing = native_preprocessing
        self.source = source
        self.weights_file = weights_file
        self.plugin = plugin
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.ones(1, 3, 1, 1), persistent=False)
        self.set_preprocessing(preprocessing)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "Encoder":
        """Always evaluation mode: a frozen encoder's batch norm uses its running
        statistics, whatever the caller does."""
        return super().train(False)

    @property
    def weights_id(self) -> str | None:
        """The published weights' name (NAME@WEIGHTS), None for local or no weights."""
        return self.source.name if self.source is not None else None

    def set_preprocessing(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing
        self.mean.copy_(torch.tensor(preprocessing.mean).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(preprocessing.std).view(1, 3, 1, 1))

    @property
    def input_size(self) -> int:
        return self.preprocessing.size

    def rep_dim(self, layer: str) -> int:
        return self.layers[self.check_layer(layer)].dim

    def check_layer(self, layer: str | None) -> str:
        layer = layer or self.spec.default_layer
        if layer not in self.layers:
            raise unknown_layer(self.name, layer, self.layers)
        return layer

    def prepare(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """PIL images to a [0, 1] batch at the input size, on the encoder's device."""
        return self.preprocessing.to_tensor(images).to(self.mean.device)

    def forward(self, images: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        layer = self.check_layer(layer)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got {tuple(images.shape)}")
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        out = self.network(x, layer)
        return out.flatten(1).float()

    def encode(self, images: Image.Image | Sequence[Image.Image], layer: str | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self(self.prepare(images), layer)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "weights": self.weights_id,
            "weights_file": self.weights_file,
            "preprocessing": self.preprocessing.to_dict(),
            "layers": {k: v.dim for k, v in self.layers.items()},
            "plugin": self.plugin,
        }
