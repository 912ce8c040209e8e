"""Representations of image files, computed once and cached.

The key of a cache entry hashes everything that changes a representation: the
encoder, its weights, the layer, the preprocessing, and each file's path, size and
modification time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from rcdm_cli.download_cache import rcdm_home
from rcdm_cli.encoders import Encoder
from rcdm_cli.inputs import load_image
from rcdm_cli.tensorfile import save_tensors


def _key(paths: list[Path], encoder: Encoder, layer: str) -> str:
    digest = hashlib.sha256()
    weights = encoder.weights_file
    stat = Path(weights).stat() if weights and Path(weights).exists() else None
    header = {
        "encoder": encoder.name,
        "weights": encoder.weights_id,
        "weights_file": weights,
        "weights_stat": [stat.st_size, stat.st_mtime_ns] if stat else None,
        "layer": layer,
        "preprocessing": encoder.preprocessing.to_dict(),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for p in paths:
        st = p.stat()
        digest.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def cache_file(paths: list[Path], encoder: Encoder, layer: str) -> Path:
    return rcdm_home() / "features" / f"eval-{_key(paths, encoder, layer)}.safetensors"


def _load(where: Path) -> torch.Tensor | None:
    try:
        return load_file(str(where))["features"]
    except (SafetensorError, OSError, KeyError):
        return None


@dataclass
class Features:
    """(N, dim) representations per layer, and which layers came from the cache."""

    layers: dict[str, torch.Tensor]
    cached: list[str] = field(default_factory=list)


def encode_file_layers(
    paths: list[Path],
    encoder: Encoder,
    layers: list[str],
    batch_size: int = 32,
    cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Features:
    """The representations of the images at ``paths`` at every layer in ``layers``.

    Layers cached from an earlier run with the same images and encoder are read back;
    the others are computed in one pass over the images, each batch decoded and
    prepared once and run through each missing layer, and cached one file per layer."""
    found: dict[str, torch.Tensor] = {}
    if cache:
        for layer in layers:
            where = cache_file(paths, encoder, layer)
            feats = _load(where) if where.exists() else None
            if feats is not None and feats.shape[0] == len(paths):
                found[layer] = feats
    cached = list(found)
    missing = [layer for layer in layers if layer not in found]
    if missing:
        rows: dict[str, list[torch.Tensor]] = {layer: [] for layer in missing}
        for start in range(0, len(paths), batch_size):
            x = encoder.prepare([load_image(p) for p in paths[start : start + batch_size]])
            with torch.no_grad():
                for layer in missing:
                    rows[layer].append(encoder(x, layer).cpu())
            if progress is not None:
                progress(min(start + batch_size, len(paths)), len(paths))
        for layer in missing:
            found[layer] = torch.cat(rows[layer])
            if cache:
                save_tensors(cache_file(paths, encoder, layer), {"features": found[layer]})
    return Features({layer: found[layer] for layer in layers}, cached)


def encode_files(
    paths: list[Path],
    encoder: Encoder,
    layer: str,
    batch_size: int = 32,
    cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(N, dim) representations of the images at ``paths``, from the cache when the
    same images were encoded the same way before."""
    return encode_file_layers(paths, encoder, [layer], batch_size, cache, progress).layers[layer]
