"""Training data: images from a folder, each giving two views of the same crop.

The diffusion target is the crop at the model's size in [-1, 1]; the encoder's view is
the same crop (same region, same flip) at the encoder's input size in [0, 1], which
the encoder normalises itself. Without --random-crop the region is the image's
central square, which is guided-diffusion's centre crop, so the recorded
preprocessing (``resize="adm"``) reproduces the encoder's view at sampling time.

Every random choice (crop, flip) is a function of (seed, epoch, image index), so a
run is reproducible whatever the number of workers or processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from rcdm_cli.errors import UsageError
from rcdm_cli.inputs import list_images
from rcdm_cli.pipeline.sampling import stream_seed

# Tags that keep the run's random streams apart.
AUGMENT, PERMUTE = 1, 2


def scan_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(readable images, unreadable ones) under ``folder``; only headers are read."""
    if not folder.is_dir():
        raise UsageError(f"no such data folder: {folder}")
    good, bad = [], []
    for path in list_images(folder):
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018 - parsing the header is the check
            good.append(path)
        except Exception:
            bad.append(path)
    if not good:
        raise UsageError(f"{folder} contains no readable images (jpg, png, webp, ...)")
    return good, bad


@dataclass(frozen=True)
class Views:
    """Sizes and augmentations of the two views."""

    target_size: int
    encoder_size: int
    random_crop: bool = False
    random_flip: bool = False
    min_crop: float = 0.8  # fraction of the short side kept by a random crop

    @property
    def deterministic(self) -> bool:
        """Whether an image's encoder view never changes (so its features can be cached);
        flipping keeps it deterministic per orientation."""
        return not self.random_crop


def _square_region(w: int, h: int, rng: np.random.Generator | None, min_crop: float) -> tuple[int, int, int, int]:
    side = min(w, h)
    if rng is not None:
        side = int(round(side * rng.uniform(min_crop, 1.0)))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
    else:
        left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def _resize_square(image: Image.Image, size: int) -> Image.Image:
    """Guided-diffusion's downscaling: halve with a box filter while at least twice
    the target, then bicubic."""
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    return image.resize((size, size), resample=Image.BICUBIC)


def make_views(image: Image.Image, views: Views, rng: np.random.Generator | None, flip: bool):
    """(target in [-1, 1] at target_size, encoder view in [0, 1] at encoder_size)."""
    image = image.convert("RGB")
    region = image.crop(_square_region(image.width, image.height, rng if views.random_crop else None, views.min_crop))
    if flip:
        region = region.transpose(Image.FLIP_LEFT_RIGHT)
    target = np.asarray(_resize_square(region, views.target_size), dtype=np.float32) / 127.5 - 1.0
    enc = np.asarray(_resize_square(region, views.encoder_size), dtype=np.float32) / 255.0
    return torch.from_numpy(target).permute(2, 0, 1), torch.from_numpy(enc).permute(2, 0, 1)


class TrainingImages(torch.utils.data.Dataset):
    """Items are (image index, epoch) pairs; returns the two views, or None for an
    image that cannot be decoded (skipped and counted by the collate function)."""

    def __init__(self, paths: list[Path], views: Views, seed: int, features: torch.Tensor | None = None):
        self.paths = paths
        self.views = views
        self.seed = seed
        self.features = features  # (N, 2 orientations, dim) when cached

    def __len__(self) -> int:
        return len(self.paths)

    def flip_and_rng(self, index: int, epoch: int) -> tuple[bool, np.random.Generator]:
        rng = np.random.default_rng(stream_seed(self.seed, AUGMENT, epoch, index))
        flip = bool(self.views.random_flip and rng.random() < 0.5)
        return flip, rng

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        flip, rng = self.flip_and_rng(index, epoch)
        try:
            with Image.open(self.paths[index]) as im:
                im.load()
                target, enc = make_views(im, self.views, rng, flip)
        except Exception:
            return None
        rep = self.features[index, int(flip)] if self.features is not None else enc
        return target, rep, index


def collate(batch):
    """Stack the readable items; report how many were skipped."""
    items = [b for b in batch if b is not None]
    skipped = len(batch) - len(items)
    if not items:
        return None, None, None, skipped
    targets, reps, indices = zip(*items)
    return torch.stack(targets), torch.stack(reps), torch.tensor(indices), skipped


class StepBatches(torch.utils.data.Sampler):
    """Batches of (index, epoch) for one process: step s of the run takes global
    positions [s*G, (s+1)*G) of an endless sequence of seeded epoch permutations,
    and process r of W takes its contiguous slice. The same global batches therefore
    reach the model whatever W is, and resuming at sample ``start`` is exact."""

    def __init__(self, num_images: int, batch_per_rank: int, world: int, rank: int, seed: int, start: int = 0):
        self.n = num_images
        self.b = batch_per_rank
        self.world = world
        self.rank = rank
        self.seed = seed
        self.start = start

    @property
    def global_batch(self) -> int:
        return self.b * self.world

    def permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stream_seed(self.seed, PERMUTE, epoch))
        return torch.randperm(self.n, generator=gen)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start
        cached_epoch, perm = -1, None
        while True:
            first = position + self.rank * self.b
            batch = []
            for p in range(first, first + self.b):
                epoch, offset = divmod(p, self.n)
                if epoch != cached_epoch:
                    cached_epoch, perm = epoch, self.permutation(epoch)
                batch.append((int(perm[offset]), epoch))
            yield batch
            position += self.global_batch
