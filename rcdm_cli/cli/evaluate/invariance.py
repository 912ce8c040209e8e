"""``rcdm evaluate invariance``: how far each augmentation moves a representation."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.completion import complete_augmentation, complete_checkpoint, complete_layer
from rcdm_cli.cli.console import StepProgress, settings
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.cli.evaluate.report import JSON, NO_RESULTS, RESULTS, report
from rcdm_cli.cli.options import BATCH, ENCODER, ETA, PRECISION, SAMPLER, SEED, STEPS, WEIGHTS
from rcdm_cli.errors import UsageError

# the command's own options (where they differ from the shared ones), in the order of its signature
CHECKPOINT = typer.Option(
    None, "--checkpoint", "-c",
    help="An RCDM (released:NAME, a checkpoint file or a run folder): measure the representation it is conditioned "
    "on, and sample it per augmentation of the first image.",
    autocompletion=complete_checkpoint,
)
LAYERS = typer.Option(
    None, "--layer", "-l",
    help="Layer; repeat (default: the checkpoint's, else backbone and head where it exists).",
    autocompletion=complete_layer,
)
PREPROCESSING = typer.Option(
    None, "--preprocessing", help="native or rcdm (default: the checkpoint's, else native)."
)
AUGMENTATION = typer.Option(
    None, "--augmentation", "-a", help="Augmentation; repeat (default: all).", autocompletion=complete_augmentation
)


def invariance(
    images: List[str] = typer.Argument(..., help="Images: files, folders, globs, or - to read paths from stdin."),
    checkpoint: Optional[str] = CHECKPOINT,
    encoder: Optional[str] = ENCODER,
    layer: List[str] = LAYERS,
    weights: Optional[Path] = WEIGHTS,
    preprocessing: Optional[str] = PREPROCESSING,
    augmentation: List[str] = AUGMENTATION,
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use the first N images only."),
    n: int = typer.Option(4, "-n", "--num-samples", help="Samples per augmentation with --checkpoint."),
    steps: str = STEPS,
    sampler: str = SAMPLER,
    eta: Optional[float] = ETA,
    seed: int = SEED,
    batch_size: int = BATCH,
    precision: str = PRECISION,
    out: Path = typer.Option(Path("invariance"), "--out", "-o", help="Where the sample grid goes (with --checkpoint)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing grid."),
    results: Path = RESULTS,
    no_results: bool = NO_RESULTS,
    json_out: bool = JSON,
) -> None:
    """Similarity between each image's representation and its augmented view's, per
    augmentation and layer (those SSL methods train with, and some they do not)."""
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.evaluation.encoding import build_encoder, measured_layers
    from rcdm_cli.evaluation.inputs import evaluation_images
    from rcdm_cli.inputs import load_image
    from rcdm_cli.pipeline.sampling import SamplingOptions

    augs = _check_request(checkpoint, encoder, augmentation, batch_size)
    device = resolve_device(settings.device)
    options = SamplingOptions(sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size,
                              precision=precision)
    grid = _grid(checkpoint, encoder, weights, preprocessing, device, options, n, out, overwrite)
    plan = grid.run.plan if grid else None  # with a model: its encoder, weights, preprocessing and default layer
    layers = measured_layers(plan.encoder, layer, default=[plan.layer]) if plan else measured_layers(encoder, layer)
    pictures = [load_image(p) for p in evaluation_images(images, max_images)]
    enc = grid.run.encoder if grid else build_encoder(
        encoder, weights, preprocessing or "native", device, download_progress()
    )
    record, table = _measure(pictures, enc, layers, augs, seed, batch_size, grid)
    report(record, results, no_results, json_out, f"cosine similarity to the augmented view ({enc.name})",
           _rows(table, augs, layers), ("augmentation", "trained with", *layers),
           written=(f"grid: {grid.path}" if grid else None,))


def _check_request(checkpoint, encoder, augmentation: list[str], batch_size: int) -> list[str]:
    """What can be refused before anything loads; the augmentations to measure."""
    from rcdm_cli.evaluation.augmentations import AUGMENTATIONS, check_augmentations

    if checkpoint is None and encoder is None:
        raise UsageError("give --encoder, or --checkpoint for the representation a model is conditioned on")
    augs = check_augmentations(augmentation or list(AUGMENTATIONS))
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    return augs


def _grid(checkpoint, encoder, weights, preprocessing, device, options, n: int, out: Path, overwrite: bool):
    """With --checkpoint, the grid of the model's samples per augmentation, every check of it made before any
    weights load."""
    if checkpoint is None:
        return None
    from rcdm_cli.evaluation.augmentation_grid import AugmentationGrid
    from rcdm_cli.pipeline.runner import RCDMRun

    run = RCDMRun.prepare(
        checkpoint=checkpoint, encoder=encoder, weights=weights, preprocessing=preprocessing, device=device,
        download_progress=download_progress(),
    )
    return AugmentationGrid.prepare(run, options, n, out, overwrite)


def _measure(pictures, enc, layers: list[str], augs: list[str], seed: int, batch_size: int, grid) -> tuple[dict, dict]:
    """The measurement under a bar that counts every view encoded, then the grid's samples under theirs:
    (record, table)."""
    from rcdm_cli.cli.common import sample_with_progress
    from rcdm_cli.cli.evaluate.progress import counting
    from rcdm_cli.evaluation.invariance import invariance as measure
    from rcdm_cli.evaluation.invariance import invariance_record

    views = len(pictures) * (1 + len(augs))
    with StepProgress(f"measuring {len(augs)} augmentations on {len(pictures)} images", views) as bar:
        table = measure(pictures, enc, layers, augs, seed=seed, batch_size=batch_size, progress=counting(bar))
    record = invariance_record(enc, layers, augs, len(pictures), seed, table)
    if grid is not None:
        record.update(grid.write(
            pictures[0], augs, seed,
            lambda reps, count, opts, **kw: sample_with_progress(grid.run, reps, count, opts, grid.network_calls, **kw),
        ))
    return record, table


def _rows(table: dict, augs: list[str], layers: list[str]) -> list[tuple[str, ...]]:
    from rcdm_cli.evaluation.augmentations import AUGMENTATIONS

    return [
        (name, "yes" if AUGMENTATIONS[name].trained else "no",
         *(f"{table[name][lay]['mean']:.3f} ± {table[name][lay]['std']:.3f}" for lay in layers))
        for name in augs
    ]
