"""Representations of image files, computed once and cached.

The key of a cache entry hashes everything that changes a representation: the
encoder, its weights, the layer, the preprocessing, and each file's path, size and
modification time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from rcdm_cli.checkpoint.download import rcdm_home
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
    where = rcdm_home() / "features" / f"eval-{_key(paths, encoder, layer)}.safetensors"
    if cache and where.exists():
        try:
            return load_file(str(where))["features"]
        except (SafetensorError, OSError, KeyError):
            pass
    rows = []
    for start in range(0, len(paths), batch_size):
        batch = [load_image(p) for p in paths[start : start + batch_size]]
        rows.append(encoder.encode(batch, layer).cpu())
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))
    feats = torch.cat(rows)
    if cache:
        save_tensors(where, {"features": feats})
    return feats
