"""Pieces the sampling commands share: progress rendering around a run, and the
warning for a model that ignores its conditioning."""

from __future__ import annotations

from rcdm_cli.cli.console import StepProgress, log, status


def warn_if_ignored(run, reps, options) -> None:
    """One warning line when the model's samples would hardly differ between
    representations: a reader would otherwise take them for what the representation
    keeps."""
    from rcdm_cli.pipeline.diagnostics import ignores_conditioning

    if run.meta.source.get("kind") in ("released", "converted"):
        return  # the authors' trained models: the check would cost a 128 px sampling run on a CPU for nothing
    effect = run.conditioning_effect(reps, options)
    if ignores_conditioning(effect):
        log.warning(
            "%s ignores its conditioning: its image changes by %.2f grey levels between representations, so the samples "
            "show the model, not the representation (undertrained? try --weights-set model, or train longer)",
            run.spec, effect,
        )


def sample_with_progress(run, reps, n: int, options, steps: int, **kwargs):
    """``run.sample`` with the model load and every denoising step shown on stderr."""
    with status(f"loading {run.spec}"):
        run.model  # noqa: B018 - load (and download) before the progress bar starts
    warn_if_ignored(run, reps, options)
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
