"""Pieces the sampling commands share: progress rendering around a run."""

from __future__ import annotations

from rcdm_cli.cli.console import StepProgress, status


def sample_with_progress(run, reps, n: int, options, steps: int, **kwargs):
    """``run.sample`` with the model load and every denoising step shown on stderr."""
    with status(f"loading {run.spec}"):
        run.model  # noqa: B018 - load (and download) before the progress bar starts
    total_images = reps.shape[0] * n
    batches = -(-total_images // options.batch_size)
    with StepProgress(f"sampling {total_images} images", batches * steps) as bar:
        return run.sample(
            reps,
            n,
            options,
            progress=lambda p: bar.update(
                (p.batch - 1) * p.steps + p.step, f"batch {p.batch}/{p.batches}, step {p.step}/{p.steps}"
            ),
            **kwargs,
        )


def encode_with_status(run, pictures, batch_size: int):
    with status(f"encoding {len(pictures)} image(s) with {run.plan.encoder}/{run.plan.layer}"):
        return run.encode(pictures, batch_size)
