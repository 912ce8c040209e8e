"""Which encoder and layers a measurement uses, when no checkpoint decides them.

Kept in one module so that every command that names an encoder directly
(``evaluate invariance``, ``evaluate probe``, ``encode``) resolves it the same way,
and a change to how names resolve is made once.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rcdm_cli.download_cache import Progress
from rcdm_cli.encoders import Encoder, Preprocessing, get_registry, resolve_encoder
from rcdm_cli.encoders.encoder import unknown_layer
from rcdm_cli.errors import UsageError


def measured_layers(encoder: str, chosen: list[str] | None, default: list[str] | None = None) -> list[str]:
    """The layers asked for, each once; by default ``default``, else the backbone and
    the head where the encoder has them (the comparison the paper makes)."""
    available = get_registry().describe(encoder).layers
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
            raise unknown_layer(encoder, name, available)
    return layers


def chosen_layer(encoder: str, layer: str | None) -> str:
    """``layer``, or the encoder's default layer, checked against what it has."""
    return resolve_encoder(encoder, layer).layer


def build_encoder(
    encoder: str,
    weights: Path | None,
    preprocessing: str | Preprocessing,
    device: torch.device | str,
    progress: Progress | None = None,
) -> Encoder:
    """The encoder with its weights (downloaded on first use) on ``device``. Built
    without checking a default layer: some family members have none, and the
    measurement names its layers itself."""
    return get_registry().create(
        encoder, weights_path=weights, preprocessing=preprocessing, device=device, progress=progress
    )
