"""What a plugin declares about an encoder, before anything is built or downloaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from torch import nn

from rcdm_cli.preprocessing import IMAGENET, Preprocessing


class Layer(NamedTuple):
    """One representation an encoder offers: its width and a one-line description.
    A tuple, so that plugins written against plain ``(dim, description)`` pairs keep
    working."""

    dim: int
    description: str


def as_layers(layers: Mapping[str, Iterable[Any]]) -> dict[str, Layer]:
    """A plugin's layer mapping with every value a :class:`Layer` (plain pairs accepted)."""
    return {name: value if isinstance(value, Layer) else Layer(*value) for name, value in layers.items()}


@dataclass(frozen=True)
class WeightSource:
    """One published weight file: where it is, under what licence, what it holds.

    ``sha256`` (or torch hub's ``sha256_prefix``, the hex digits some file names carry)
    is checked after download and once on a copy found in the cache; without either,
    only the download's completeness can be checked (:attr:`integrity` says which).
    ``checked_by`` replaces that statement for weights that something other than rcdm
    downloads (timm's, through the Hugging Face hub). ``preprocessing`` overrides the
    encoder's native one when these weights were evaluated differently.
    """

    name: str
    url: str | None
    license: str
    description: str = ""
    filename: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    notes: str = ""
    preprocessing: Preprocessing | None = None
    checked_by: str = ""

    @property
    def file_name(self) -> str | None:
        if self.filename:
            return self.filename
        return self.url.rsplit("/", 1)[-1] if self.url else None

    @property
    def integrity(self) -> str:
        """Which check a downloaded copy of these weights gets, in one line."""
        if self.checked_by:
            return self.checked_by
        if self.sha256:
            return f"SHA-256 {self.sha256} checked after download and once on a cached copy"
        if self.sha256_prefix:
            return (
                f"SHA-256 prefix {self.sha256_prefix} (torch hub's file-name convention) checked after download "
                "and once on a cached copy"
            )
        if self.url:
            return "no published hash: only completeness (the server's Content-Length) is checked on download"
        return "no download: a local file given with --weights, loaded strictly"


@dataclass(frozen=True)
class BuildRequest:
    """What the host hands a plugin's ``build``: the weights to load (a local file,
    already downloaded; None for encoders without published weights), which published
    source they follow, the argument of a family name (``timm:<argument>``), and a seed
    for anything random."""

    weights_path: Path | None
    source: WeightSource | None
    argument: str | None = None
    seed: int = 0


class FamilyMember(NamedTuple):
    """What a family's ``describe(argument)`` says of one member: its layers, native
    preprocessing and, when it has any, its published weights. Families may still
    return a plain 2- or 3-tuple in this order."""

    layers: Mapping[str, Layer]
    preprocessing: Preprocessing
    weights: tuple[WeightSource, ...] = ()

    @classmethod
    def of(cls, described: Iterable[Any]) -> "FamilyMember":
        """A ``describe`` result of either form, with its layers as :class:`Layer`."""
        items = tuple(described)
        weights = tuple(items[2]) if len(items) > 2 else ()
        return cls(as_layers(items[0]), items[1], weights)


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder as registered by a plugin.

    ``build(request)`` returns an ``nn.Module`` whose ``forward(x, layer)`` maps a
    batch of *normalised* images (B, 3, S, S) to the representation at ``layer``
    (B, dim). ``layers`` maps each layer name to a :class:`Layer` (its width and a
    one-line description; a plain pair is accepted).
    ``weights`` lists the published weight files; the first is the default, others are
    chosen with ``NAME@WEIGHTS``. A *family* (``family=True``) is used as
    ``NAME:ARGUMENT`` (``timm:convnext_tiny``); its ``describe(argument)`` returns a
    :class:`FamilyMember`: the layers and native preprocessing of one member, and
    optionally the member's weight sources (shown by ``rcdm encoders NAME:ARGUMENT``).
    It raises ``UsageError`` for an argument that names no member.
    """

    name: str
    description: str
    build: Callable[[BuildRequest], nn.Module]
    layers: Mapping[str, Layer] = field(default_factory=dict)
    weights: tuple[WeightSource, ...] = ()
    preprocessing: Preprocessing = IMAGENET
    default_layer: str = "backbone"
    family: bool = False
    describe: Callable[[str], FamilyMember | tuple] | None = None

    def __post_init__(self) -> None:
        # normalised once here, so that no reader has to accept both forms
        object.__setattr__(self, "layers", as_layers(self.layers))

    def weight_source(self, variant: str | None) -> WeightSource | None:
        if not self.weights:
            return None
        if variant is None:
            return self.weights[0]
        for source in self.weights:
            if source.name == variant:
                return source
        return None
