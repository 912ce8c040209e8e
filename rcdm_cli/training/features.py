"""The feature cache: each image's representation computed once, reused every epoch.

Only valid when the encoder's view of an image never changes (no random crop). With
random flips both orientations are cached. Entries live in
``$RCDM_HOME/features/<key>.safetensors``, where the key hashes everything that
changes a representation: the encoder, its weights, the layer, the preprocessing, the
view size, and every image's path, size and modification time. Change any of these and
the cache is simply not found.

Under torchrun the processes share the work: each encodes its own contiguous slice
of the images and the slices are gathered, so every process holds the whole table.
The encoder runs in float32, exactly as it does at sampling time and in training
without a cache, so cached and live representations are the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file

from rcdm_cli.download_cache import rcdm_home
from rcdm_cli.encoders import Encoder
from rcdm_cli.tensorfile import save_tensors
from rcdm_cli.training import distributed as dist_util
from rcdm_cli.training.data import Views, ignore_stop_signals, make_views, start_loader
from rcdm_cli.training.distributed import World

Progress = Callable[[int, int], None]


class Stopped(Exception):
    """A stop signal arrived while the cache was being computed."""


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
        "geometry": "adm-centre-crop",  # how make_views cuts the encoder view; a change must miss old entries
        "flip": views.random_flip,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for p in paths:
        st = p.stat()
        digest.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def cache_path(key: str) -> Path:
    return rcdm_home() / "features" / f"{key}.safetensors"


class _EncoderViews(torch.utils.data.Dataset):
    """One process's slice of the images, padded to the common slice length with -1
    (so every process runs the same number of batches). An item is (views of each
    orientation, whether the image decoded)."""

    def __init__(self, paths: list[Path], indices: list[int], views: Views):
        self.paths = paths
        self.indices = indices
        self.views = views
        self.orientations = (False, True) if views.random_flip else (False,)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        blank = torch.zeros(len(self.orientations), 3, self.views.encoder_size, self.views.encoder_size)
        if i < 0:
            return blank, False
        try:
            with Image.open(self.paths[i]) as im:
                im.load()
                return torch.stack([make_views(im, self.views, None, flip)[1] for flip in self.orientations]), True
        except Exception:
            return blank, False


def compute_features(
    paths: list[Path],
    encoder: Encoder,
    layer: str,
    views: Views,
    *,
    world: World = World(),
    batch_size: int = 32,
    workers: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """(N, 2, dim): each image's representation unflipped and (if flips are used)
    flipped; unreadable images get NaN rows, which training never reads (it replaces
    those images). A collective under torchrun; raises Stopped when ``should_stop``
    turns true on any process."""
    if not views.deterministic:
        raise ValueError("features can be cached only for a deterministic encoder view (no random crop)")
    device = encoder.mean.device
    per_rank = math.ceil(len(paths) / world.size)
    first = world.rank * per_rank
    mine = [i if i < len(paths) else -1 for i in range(first, first + per_rank)]
    dataset = _EncoderViews(paths, mine, views)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, worker_init_fn=ignore_stop_signals if workers else None
    )
    local = torch.full((per_rank, 2, encoder.rep_dim(layer)), float("nan"))
    done = 0
    for batch, ok in start_loader(loader):
        rows = torch.arange(done, done + len(ok))[ok]
        if len(rows):
            flat = batch[ok].flatten(0, 1).to(device)
            with torch.no_grad():
                feats = encoder(flat, layer).float().cpu().unflatten(0, (len(rows), len(dataset.orientations)))
            local[rows, : feats.shape[1]] = feats
        done += len(ok)
        if progress is not None:
            progress(min(done * world.size, len(paths)), len(paths))
        if dist_util.any_true(bool(should_stop and should_stop()), world, device):
            raise Stopped()
    if not views.random_flip:
        local[:, 1] = local[:, 0]
    return dist_util.gather_rows(local, world, device)[: len(paths)]


def _read_cache(path: Path, n: int) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        feats = load_file(str(path))["features"]
    except (SafetensorError, OSError, KeyError):
        return None  # a damaged cache entry is recomputed
    return feats if feats.shape[0] == n else None


def load_or_compute(
    paths: list[Path],
    encoder: Encoder,
    layer: str,
    views: Views,
    *,
    world: World = World(),
    workers: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, Path, bool]:
    """(features, cache file, whether it was found in the cache). A collective under
    torchrun: the cache counts as found only if every process found it (nodes need not
    share storage), and otherwise all compute it together. The first process of each
    node writes it."""
    path = cache_path(cache_key(paths, encoder, layer, views))
    feats = _read_cache(path, len(paths))
    if not dist_util.any_true(feats is None, world, encoder.mean.device):
        return feats, path, True
    fresh = compute_features(
        paths, encoder, layer, views, world=world, workers=workers, progress=progress, should_stop=should_stop
    )
    if world.local_rank == 0 and feats is None:
        save_tensors(path, {"features": fresh})
    return fresh, path, False
