"""Training data: images from a folder, each giving two views of the same crop.

The diffusion target is the crop at the model's size in [-1, 1]; the encoder's view is
the same crop (same region, same flip) at the encoder's input size in [0, 1], which
the encoder normalises itself. Without --random-crop both views are made by the very
functions sampling uses (``preprocessing.diffusion_target`` and ``Preprocessing.crop``
with guided-diffusion's ``resize="adm"``), so a training image's representation is
exactly the one ``rcdm sample`` computes from the same file.

Every random choice (crop, flip) is a function of (seed, epoch, image index), so a
run is reproducible whatever the number of workers or processes. An image that fails
to decode during training is replaced by the next one in sorted order that decodes
(a fixed rule, so every process count still sees the same batches); every process
therefore always has a full batch.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from rcdm_cli.errors import UsageError
from rcdm_cli.inputs import as_seen, list_images
from rcdm_cli.preprocessing import Preprocessing, diffusion_target
from rcdm_cli.seeding import stream_seed

# Tags that keep the run's random streams apart.
AUGMENT, PERMUTE = 1, 2
# How many files after an undecodable one are tried as its replacement.
REPLACEMENT_TRIES = 32
# What a scheduler or a terminal sends; data-loading processes leave them to the
# main process, which saves and stops (see loop.py).
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None), signal.SIGINT) if s is not None)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of every DataLoader of a run. A scheduler signals the whole
    process group; a worker that died of it would make the main process fail ("worker
    killed by signal") instead of saving. Workers still end with their parent."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # the main process blocked them while forking
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def start_loader(loader: torch.utils.data.DataLoader):
    """``iter(loader)``, with the stop signals blocked while its workers are forked, so
    that none reaches a worker before ``ignore_stop_signals`` has run there; a signal
    sent meanwhile waits, and then reaches the main process."""
    if not loader.num_workers or not hasattr(signal, "pthread_sigmask"):
        return iter(loader)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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

    @property
    def encoder_geometry(self) -> Preprocessing:
        """The encoder view's geometry: guided-diffusion's centre crop at the encoder's
        size, as recorded in the checkpoint (normalisation is the encoder's business)."""
        return Preprocessing("view", size=self.encoder_size, resize="adm", resize_to=None, interpolation="bicubic")


def _random_square(w: int, h: int, rng: np.random.Generator, min_crop: float) -> tuple[int, int, int, int]:
    side = int(round(min(w, h) * rng.uniform(min_crop, 1.0)))
    left = int(rng.integers(0, w - side + 1))
    top = int(rng.integers(0, h - side + 1))
    return left, top, left + side, top + side


def make_views(image: Image.Image, views: Views, rng: np.random.Generator | None, flip: bool):
    """(target in [-1, 1] at target_size, encoder view in [0, 1] at encoder_size).

    The centre crop (no ``rng`` or no --random-crop) is exactly sampling's; a random
    crop is a square region, which the same functions then only resize. A flip mirrors
    the finished views."""
    image = as_seen(image)
    if views.random_crop and rng is not None:
        image = image.crop(_random_square(image.width, image.height, rng, views.min_crop))
    target = diffusion_target(image, views.target_size)
    enc = views.encoder_geometry.to_tensor(image)[0]
    if flip:
        target, enc = target.flip(-1), enc.flip(-1)
    return target, enc


class TrainingImages(torch.utils.data.Dataset):
    """Items are (image index, epoch) pairs. An item is (target, conditioning, the
    indices of files that failed to decode on the way); an undecodable image is
    replaced by the next decodable one, and the item is (None, None, failures) only
    when REPLACEMENT_TRIES files in a row fail."""

    def __init__(self, paths: list[Path], views: Views, seed: int, features: torch.Tensor | None = None):
        self.paths = paths
        self.views = views
        self.seed = seed
        self.features = features  # (N, 2 orientations, dim) when cached; NaN rows for failures

    def __len__(self) -> int:
        return len(self.paths)

    def flip_and_rng(self, index: int, epoch: int) -> tuple[bool, np.random.Generator]:
        rng = np.random.default_rng(stream_seed(self.seed, AUGMENT, epoch, index))
        flip = bool(self.views.random_flip and rng.random() < 0.5)
        return flip, rng

    def load(self, index: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The two views of one image (the conditioning is its cached features when
        there is a cache), or None if it cannot be decoded."""
        flip, rng = self.flip_and_rng(index, epoch)
        try:
            with Image.open(self.paths[index]) as im:
                im.load()
                target, enc = make_views(im, self.views, rng, flip)
        except Exception:
            return None
        if self.features is None:
            return target, enc
        rep = self.features[index, int(flip)]
        return (target, rep) if bool(torch.isfinite(rep).all()) else None

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        failed = []
        for k in range(min(REPLACEMENT_TRIES, len(self.paths))):
            candidate = (index + k) % len(self.paths)
            views = self.load(candidate, epoch)
            if views is not None:
                return views[0], views[1], failed
            failed.append(candidate)
        return None, None, failed


def collate(batch):
    """(targets, conditioning, indices of files that failed to decode, number of
    positions left empty); the tensors are None when any position is empty, because
    a step is taken only on a full batch."""
    failed = sorted({i for _, _, f in batch for i in f})
    empty = sum(1 for t, _, _ in batch if t is None)
    if empty:
        return None, None, failed, empty
    return torch.stack([t for t, _, _ in batch]), torch.stack([r for _, r, _ in batch]), failed, 0


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
