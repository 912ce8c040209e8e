"""Which encoder and layers a measurement uses, when no checkpoint decides them.

Kept in one module so that every command that names an encoder directly
(``evaluate invariance``, ``evaluate probe``, ``encode``) resolves it the same way,
and a change to how names resolve is made once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rcdm_cli.download_cache import Progress
from rcdm_cli.encoders import Encoder, Preprocessing, get_registry
from rcdm_cli.errors import UsageError


def measured_layers(encoder: str, chosen: list[str] | None, default: list[str] | None = None) -> list[str]:
    """The layers asked for, each once; by default ``default``, else the backbone and
    the head where the encoder has them (the comparison the paper makes)."""
    available, _ = get_registry().layers(encoder)
    if chosen:
        layers = list(dict.fromkeys(chosen))
    elif default:
        layers = list(default)
    else:
        layers = [name for name in ("backbone", "head") if name in available]
    if not layers:
        raise UsageError(
            f"encoder {encoder!r} has neither a backbone nor a head layer; pick layers with --layer: {', '.join(available)}"
        )
    for name in layers:
        if name not in available:
            raise UsageError(f"encoder {encoder!r} has no layer {name!r}; it has: {', '.join(available)}")
    return layers


def chosen_layer(encoder: str, layer: str | None) -> str:
    """``layer``, or the encoder's default layer, checked against what it has."""
    registry = get_registry()
    layers, _ = registry.layers(encoder)
    chosen = layer or registry.get(encoder)[0].spec.default_layer
    if chosen not in layers:
        raise UsageError(f"encoder {encoder!r} has no layer {chosen!r}; it has: {', '.join(layers)}")
    return chosen


def build_encoder(
    encoder: str,
    weights: Path | None,
    preprocessing: str | Preprocessing,
    device: torch.device | str,
    progress: Progress | None = None,
) -> Encoder:
    """The encoder with its weights (downloaded on first use) on ``device``."""
    return get_registry().create(
        encoder, weights_path=weights, preprocessing=preprocessing, device=device, progress=progress
    )
