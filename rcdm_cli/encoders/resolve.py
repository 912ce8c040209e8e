"""An encoder name resolved against the installed plugins, before anything is built.

Every command that takes ``--encoder``, ``--layer``, ``--weights`` and
``--preprocessing`` needs the same answers (which plugin, which published weights,
which layer and its width, which input) and the same refusals, worded the same way,
before it starts work; :class:`ResolvedEncoder` holds them, and builds the encoder
only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch

from rcdm_cli.download_cache import Progress
from rcdm_cli.encoders.encoder import Encoder, UnknownLayer, unknown_layer
from rcdm_cli.encoders.names import EncoderName
from rcdm_cli.encoders.spec import BuildRequest, EncoderSpec, Layer, WeightSource
from rcdm_cli.encoders.weights import encoder_cache_dir, fetch_weights
from rcdm_cli.errors import UsageError
from rcdm_cli.preprocessing import RCDM, Preprocessing

__all__ = ["ResolvedEncoder", "UnknownLayer", "display_name", "resolve_preprocessing", "unknown_layer"]


def resolve_preprocessing(choice: str | Preprocessing | dict | None, native: Preprocessing) -> Preprocessing:
    """``native`` (also None), ``rcdm``, or an explicit preprocessing (as recorded in
    a checkpoint's metadata)."""
    if isinstance(choice, Preprocessing):
        return choice
    if isinstance(choice, dict):
        return Preprocessing.from_dict(choice)
    if choice is None or choice == "native":
        return native
    if choice == "rcdm":
        return RCDM
    raise UsageError(f"unknown preprocessing {choice!r}: expected native or rcdm")


def display_name(spec: EncoderSpec, name: EncoderName) -> str:
    """``NAME@WEIGHTS`` only when the weights are not the encoder's default ones
    (``supervised@v2``, but ``dino`` for dino's own)."""
    default = spec.weight_source(None)
    if name.variant and default is not None and name.variant == default.name:
        name = name.without_weights
    return str(name)


@dataclass(frozen=True)
class ResolvedEncoder:
    """Everything known about an encoder without building it (see
    :meth:`rcdm_cli.encoders.registry.EncoderRegistry.resolve`)."""

    requested: str  # the name as the user gave it: what messages quote
    name: EncoderName
    spec: EncoderSpec = field(repr=False)
    plugin: str  # "distribution version" of the plugin that registered it
    source: WeightSource | None  # the published weights chosen (NAME@WEIGHTS, else the default)
    layer: str  # the layer asked for, else the encoder's default one
    layers: Mapping[str, Layer]
    native_preprocessing: Preprocessing  # the encoder's own, or its weights' when they differ
    preprocessing: Preprocessing  # the one chosen
    weights_path: Path | None = None  # a local weights file (--weights), checked to exist

    @property
    def canonical(self) -> str:
        """The encoder without its weights (``supervised``, ``timm:resnet18``): what a
        built encoder and a checkpoint's metadata call it."""
        return str(self.name.without_weights)

    @property
    def display_name(self) -> str:
        return display_name(self.spec, self.name)

    @property
    def variant(self) -> str | None:
        return self.name.variant

    @property
    def dim(self) -> int:
        """The width of the chosen layer's representations."""
        return self.layers[self.check_layer(self.layer)].dim

    def check_layer(self, layer: str | None) -> str:
        """``layer`` (default: the chosen one), refused when the encoder lacks it."""
        layer = layer or self.layer
        if layer not in self.layers:
            raise unknown_layer(self.requested, layer, self.layers)
        return layer

    def with_layer(self, layer: str | None) -> "ResolvedEncoder":
        return replace(self, layer=self.check_layer(layer or self.spec.default_layer))

    def download(self) -> tuple[str, Path] | None:
        """``(url, cache path)`` of the published weights the build would fetch; None
        with a local weights file or for an encoder without published weights."""
        if self.weights_path is not None or self.source is None or not self.source.url:
            return None
        return self.source.url, encoder_cache_dir() / self.source.file_name

    def build(self, device: torch.device | str = "cpu", progress: Progress | None = None, seed: int = 0) -> Encoder:
        """The encoder with its published (or local) weights, frozen; downloads the
        published weights first when they are not in the cache."""
        path = self.weights_path
        if path is None and self.source is not None and self.source.url:
            path = fetch_weights(self.source, progress)
        network = self.spec.build(BuildRequest(path, self.source, self.name.argument, seed))
        encoder = Encoder(
            self.spec,
            network,
            name=self.canonical,
            layers=self.layers,
            preprocessing=self.preprocessing,
            native_preprocessing=self.native_preprocessing,
            source=self.source,
            weights_file=str(path) if path else None,
            plugin=self.plugin,
        )
        return encoder.to(device)
