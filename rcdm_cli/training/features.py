"""The feature cache: each image's representation computed once, reused every epoch.

Only valid when the encoder's view of an image never changes (no random crop). With
random flips both orientations are cached. Entries live in
``$RCDM_HOME/features/<key>.safetensors``, where the key hashes everything that
changes a representation: the encoder, its weights, the layer, the preprocessing, the
view size, and every image's path, size and modification time. Change any of these and
the cache is simply not found.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from rcdm_cli.checkpoint.download import rcdm_home
from rcdm_cli.encoders import Encoder
from rcdm_cli.tensorfile import save_tensors
from rcdm_cli.training.data import Views, make_views


def cache_key(paths: list[Path], encoder: Encoder, layer: str, views: Views) -> str:
    digest = hashlib.sha256()
    weights = encoder.weights_file
    weights_stat = None
    if weights and Path(weights).exists():
        st = Path(weights).stat()
        weights_stat = [st.st_size, st.st_mtime_ns]
    header = {
        "encoder": encoder.name,
        "weights": encoder.weights_id,
        "weights_file": weights,
        "weights_stat": weights_stat,
        "layer": layer,
        "preprocessing": encoder.preprocessing.to_dict(),
        "encoder_size": views.encoder_size,
        "flip": views.random_flip,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for p in paths:
        st = p.stat()
        digest.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def cache_path(key: str) -> Path:
    return rcdm_home() / "features" / f"{key}.safetensors"


def compute_features(
    paths: list[Path],
    encoder: Encoder,
    layer: str,
    views: Views,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(N, 2, dim): each image's representation unflipped and (if flips are used)
    flipped; unreadable images get NaN rows, which training never reads because it
    skips those images."""
    dim = encoder.rep_dim(layer)
    out = torch.full((len(paths), 2, dim), float("nan"))
    orientations = (False, True) if views.random_flip else (False,)
    device = encoder.mean.device
    for start in range(0, len(paths), batch_size):
        chunk = list(range(start, min(start + batch_size, len(paths))))
        for flip in orientations:
            batch, rows = [], []
            for i in chunk:
                try:
                    with Image.open(paths[i]) as im:
                        im.load()
                        batch.append(make_views(im, views, None, flip)[1])
                    rows.append(i)
                except Exception:
                    continue
            if batch:
                with torch.no_grad():
                    feats = encoder(torch.stack(batch).to(device), layer).float().cpu()
                out[rows, int(flip)] = feats
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))
    if not views.random_flip:
        out[:, 1] = out[:, 0]
    return out


def load_or_compute(
    paths: list[Path], encoder: Encoder, layer: str, views: Views, progress=None
) -> tuple[torch.Tensor, Path, bool]:
    """(features, cache file, whether it was found in the cache)."""
    path = cache_path(cache_key(paths, encoder, layer, views))
    if path.exists():
        try:
            feats = load_file(str(path))["features"]
            if feats.shape[0] == len(paths):
                return feats, path, True
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged cache entry is recomputed
    feats = compute_features(paths, encoder, layer, views, progress=progress)
    save_tensors(path, {"features": feats})
    return feats, path, False
