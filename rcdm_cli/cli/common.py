"""Pieces the sampling commands share: the run each one prepares from its options,
progress rendering around it, the warning for a model that ignores its
conditioning, and the line that ends the command."""

from __future__ import annotations

from pathlib import Path

from rcdm_cli.cli.console import StepProgress, log, settings, status


def prepare_run(model, sampling, n: int, *, reps=None, images: bool = True, rep_dim: int | None = None):
    """The preamble of every sampling command: the checkpoint and encoder resolved,
    the sampling options made concrete for the model, and the request checked, all
    from metadata, before any weights load. Returns (run, options, diffusion)."""
    from rcdm_cli.cli.downloads import download_progress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.pipeline.runner import RCDMRun

    run = RCDMRun.prepare(
        checkpoint=model.checkpoint, encoder=model.encoder, layer=model.layer, weights=model.weights,
        preprocessing=model.preprocessing, device=resolve_device(settings.device), images=images, rep_dim=rep_dim,
        download_progress=download_progress(), weight_set=model.weight_set,
    )
    options = run.resolve(sampling.options())
    return run, options, run.check(reps, n, options)


def report_written(what: str, out: Path, seconds: float, manifest: Path) -> None:
    """The last line of every sampling command: what was written where."""
    log.info("wrote %s to %s in %.1f s; manifest: %s", what, out, seconds, manifest)


def warn_if_ignored(run, reps, options) -> None:
    """One warning line when the model's samples would hardly differ between
    representations: a reader would otherwise take them for what the representation
    keeps."""
    from rcdm_cli.pipeline.diagnostics import ignores_conditioning

    if run.meta.source.get("kind") in ("released", "converted", "init"):
        # the authors' trained models: the check would cost a 128 px sampling run on a CPU for nothing;
        # init:PRESET is untrained by request (a smoke test), and knowingly follows nothing
        return
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
