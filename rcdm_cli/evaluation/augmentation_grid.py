"""What an RCDM draws from each augmented view of one image (``rcdm evaluate
invariance --checkpoint``): one grid, a row per view (the original first), the view
then its samples, every row drawn from the same noise so that the rows differ only
by what the representation kept of the augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from rcdm_cli.evaluation.augmentations import AUGMENTATIONS
from rcdm_cli.evaluation.invariance import augmented
from rcdm_cli.fileio import check_writable
from rcdm_cli.imaging import make_grid, save_png, to_pil
from rcdm_cli.pipeline.sampling import SamplingOptions
from rcdm_cli.preprocessing import diffusion_target

GRID_NAME = "augmentations.png"


@dataclass
class AugmentationGrid:
    run: object  # an RCDMRun, prepared
    options: SamplingOptions  # resolved for the run's model
    network_calls: int
    n: int
    path: Path

    @classmethod
    def prepare(cls, run, options: SamplingOptions, n: int, out: Path, overwrite: bool) -> "AugmentationGrid":
        """Every check the grid needs, before any weights load."""
        options = run.resolve(options)
        diffusion = run.check(None, n, options)
        path = out / GRID_NAME
        check_writable([path], overwrite)
        return cls(run, options, diffusion.num_timesteps, n, path)

    def write(self, picture: Image.Image, augs: Sequence[str], seed: int, sample: Callable | None = None) -> dict:
        """Sample, save the grid, and return what the results record adds.
        ``sample(reps, n, options, same_noise=True)`` defaults to the run's own."""
        run, n = self.run, self.n
        sample = sample or (lambda reps, count, opts, **kw: run.sample(reps, count, opts, **kw))
        views = [picture] + [augmented(picture, AUGMENTATIONS[a], seed, 0) for a in augs]
        reps = run.encode(views, self.options.batch_size)
        samples = sample(reps, n, self.options, same_noise=True).samples
        tiles, labels = [], []
        for j, name in enumerate(["original", *augs]):
            tiles.append(to_pil(diffusion_target(views[j], run.meta.image_size)))
            labels.append(name)
            tiles += [to_pil(samples[j, k]) for k in range(n)]
            labels += [f"#{k}" for k in range(n)]
        save_png(make_grid(tiles, labels, columns=n + 1), self.path)
        return {
            "grid": str(self.path),
            "checkpoint": run.checkpoint_info(),
            "grid_encoder": run.encoder_info(),
            "samples_per_augmentation": n,
            "sampling": {**self.options.to_dict(), "same_noise": True, "network_calls": self.network_calls},
        }
