"""``rcdm evaluate``: rank/MRR faithfulness, invariance, linear probes, FID.

Every command prints a table (or ``--json``) and appends its result to a JSON-lines
file (``--results``, default ``rcdm-results.jsonl``) so batch jobs can collect them.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.completion import complete_encoder, complete_layer
from rcdm_cli.cli.console import log, print_json, settings, status
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.cli.sample import (
    BATCH,
    CHECKPOINT,
    COMPILE,
    ENCODER,
    ETA,
    LAYER,
    PRECISION,
    PREPROCESSING,
    SAMPLER,
    SEED,
    STEPS,
    WEIGHTS,
)
from rcdm_cli.errors import UsageError

app = typer.Typer(help="Put numbers on what the pictures show.", no_args_is_help=True)

RESULTS = typer.Option(
    Path("rcdm-results.jsonl"), "--results", help="JSON-lines file the result is appended to."
)
NO_RESULTS = typer.Option(False, "--no-results", help="Do not append to the results file.")
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def _report(record: dict, results: Path, no_results: bool, json_out: bool, title: str, rows: list[tuple[str, ...]], columns: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.table import Table

    from rcdm_cli.evaluation.results import append_result

    record = append_result(None if no_results else results, record)
    if json_out:
        print_json(record)
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if not no_results:
        log.info("appended to %s", results)


def _images(data: Path, limit: int | None) -> list[Path]:
    from rcdm_cli.inputs import expand_inputs

    paths = expand_inputs([str(data)])
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--max-images must be positive, got {limit}")
        paths = paths[:limit]
    return paths


@app.command("rank")
def rank(
    data: Path = typer.Argument(..., help="Conditioning images (a folder, file or glob)."),
    n: int = typer.Option(4, "-n", "--num-samples", help="Samples per conditioning image (K)."),
    metric: str = typer.Option("cosine", "--metric", help="cosine or l2."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use the first N images only."),
    checkpoint: Optional[str] = CHECKPOINT,
    encoder: Optional[str] = ENCODER,
    layer: Optional[str] = LAYER,
    weights: Optional[Path] = WEIGHTS,
    preprocessing: Optional[str] = PREPROCESSING,
    sampler: str = SAMPLER,
    steps: str = STEPS,
    eta: Optional[float] = ETA,
    seed: int = SEED,
    batch_size: int = BATCH,
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    results: Path = RESULTS,
    no_results: bool = NO_RESULTS,
    json_out: bool = JSON,
) -> None:
    """Faithfulness: rank each conditioning image among all of them by similarity to
    its samples' representations (mean rank, MRR, top-1, top-5)."""
    from rcdm_cli.cli.common import encode_with_status, sample_with_progress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.evaluation.rank import METRICS, ranks, summarize
    from rcdm_cli.imaging import to_pil
    from rcdm_cli.inputs import load_image
    from rcdm_cli.pipeline.runner import RCDMRun
    from rcdm_cli.pipeline.sampling import SamplingOptions

    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    paths = _images(data, max_images)
    if len(paths) < 2:
        raise UsageError("ranking needs at least two conditioning images")
    run = RCDMRun.prepare(
        checkpoint=checkpoint, encoder=encoder, layer=layer, weights=weights, preprocessing=preprocessing,
        device=resolve_device(settings.device), download_progress=download_progress(),
    )
    options = SamplingOptions(
        sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision, compile=compile_
    )
    diffusion = run.check(None, n, options)
    pictures = [load_image(p) for p in paths]
    cond = encode_with_status(run, pictures, batch_size)
    result = sample_with_progress(run, cond, n, options, diffusion.num_timesteps)
    flat = [to_pil(img) for img in result.samples.reshape(-1, *result.samples.shape[2:])]
    with status(f"encoding {len(flat)} samples"):
        sample_reps = run.encode(flat, batch_size).reshape(len(paths), n, -1)
    table = ranks(sample_reps, cond, metric)
    summary = summarize(table)
    record = {
        "metric": "rank",
        "checkpoint": run.checkpoint_info(),
        "encoder": run.plan.encoder,
        "layer": run.plan.layer,
        "similarity": metric,
        **summary,
        "sampling": {**options.to_dict(), "network_calls": diffusion.num_timesteps},
        "images": [str(p) for p in paths],
        "ranks": table.tolist(),
    }
    _report(
        record, results, no_results, json_out, "faithfulness (rank of the conditioning image)",
        [(run.plan.encoder, run.plan.layer, str(len(paths)), str(n), f"{summary['mean_rank']:.2f}", f"{summary['mrr']:.3f}",
          f"{summary['top1']:.3f}", f"{summary['top5']:.3f}", f"{summary['chance_mean_rank']:.2f} / {summary['chance_mrr']:.3f}")],
        ("encoder", "layer", "images", "samples", "mean rank", "MRR", "top-1", "top-5", "chance rank / MRR"),
    )


@app.command("invariance")
def invariance(
    data: Path = typer.Argument(..., help="Images (a folder, file or glob)."),
    encoder: str = typer.Option(..., "--encoder", "-e", help="Encoder to measure.", autocompletion=complete_encoder),
    layer: List[str] = typer.Option(None, "--layer", "-l", help="Layer; repeat (default: backbone and head where it exists).", autocompletion=complete_layer),
    weights: Optional[Path] = WEIGHTS,
    preprocessing: str = typer.Option("native", "--preprocessing", help="native or rcdm."),
    augmentation: List[str] = typer.Option(None, "--augmentation", "-a", help="Augmentation; repeat (default: all)."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use the first N images only."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c", help="Also sample an RCDM per augmentation of the first image."),
    n: int = typer.Option(4, "-n", "--num-samples", help="Samples per augmentation with --checkpoint."),
    steps: str = STEPS,
    sampler: str = SAMPLER,
    seed: int = SEED,
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
    from rcdm_cli.encoders import get_registry
    from rcdm_cli.evaluation.augmentations import AUGMENTATIONS
    from rcdm_cli.evaluation.invariance import augmented
    from rcdm_cli.evaluation.invariance import invariance as measure
    from rcdm_cli.inputs import load_image

    registry = get_registry()
    layers_available, _ = registry.layers(encoder)
    layers = list(layer) if layer else [name for name in ("backbone", "head") if name in layers_available]
    for name in layers:
        if name not in layers_available:
            raise UsageError(f"encoder {encoder!r} has no layer {name!r}; it has: {', '.join(layers_available)}")
    augs = list(augmentation) if augmentation else list(AUGMENTATIONS)
    for name in augs:
        if name not in AUGMENTATIONS:
            raise UsageError(f"unknown augmentation {name!r}; choose from: {', '.join(AUGMENTATIONS)}")
    paths = _images(data, max_images)
    pictures = [load_image(p) for p in paths]
    run = None
    if checkpoint is not None:
        from rcdm_cli.fileio import check_writable
        from rcdm_cli.pipeline.runner import RCDMRun
        from rcdm_cli.pipeline.sampling import SamplingOptions

        run = RCDMRun.prepare(checkpoint=checkpoint, encoder=encoder, device=resolve_device(settings.device), download_progress=download_progress())
        options = SamplingOptions(sampler=sampler, steps=steps, seed=seed, batch_size=16, precision=precision)
        diffusion = run.check(None, n, options)
        check_writable([out / "augmentations.png"], overwrite)
    device = resolve_device(settings.device)
    enc = registry.create(encoder, weights_path=weights, preprocessing=preprocessing, device=device, progress=download_progress())
    with status(f"measuring {len(augs)} augmentations on {len(paths)} images"):
        table = measure(pictures, enc, layers, augs, seed=seed)
    record = {
        "metric": "invariance",
        "encoder": enc.name,
        "weights": enc.weights_id,
        "preprocessing": enc.preprocessing.to_dict(),
        "layers": layers,
        "images": len(paths),
        "seed": seed,
        "similarity": table,
        "trained_augmentations": [a for a in augs if AUGMENTATIONS[a].trained],
    }
    if run is not None:
        from rcdm_cli.cli.common import sample_with_progress
        from rcdm_cli.imaging import make_grid, save_png, to_pil
        from rcdm_cli.preprocessing import diffusion_target

        views = [pictures[0]] + [augmented(pictures[0], AUGMENTATIONS[a], seed, 0) for a in augs]
        reps = run.encode(views)
        samples = sample_with_progress(run, reps, n, options, diffusion.num_timesteps, same_noise=True).samples
        tiles, labels = [], []
        for j, name in enumerate(["original", *augs]):
            tiles.append(to_pil(diffusion_target(views[j], run.meta.image_size)))
            labels.append(name)
            tiles += [to_pil(samples[j, k]) for k in range(n)]
            labels += [f"#{k}" for k in range(n)]
        save_png(make_grid(tiles, labels, columns=n + 1), out / "augmentations.png")
        record["grid"] = str(out / "augmentations.png")
        record["checkpoint"] = run.checkpoint_info()
    rows = [
        (name, "yes" if AUGMENTATIONS[name].trained else "no", *(f"{table[name][lay]['mean']:.3f} ± {table[name][lay]['std']:.3f}" for lay in layers))
        for name in augs
    ]
    _report(record, results, no_results, json_out, f"cosine similarity to the augmented view ({enc.name})", rows, ("augmentation", "trained with", *layers))


@app.command("probe")
def probe(
    train_dir: Path = typer.Argument(..., help="Training images, one sub-folder per class."),
    val_dir: Path = typer.Argument(..., help="Validation images, the same classes."),
    encoder: str = typer.Option(..., "--encoder", "-e", help="Encoder to probe.", autocompletion=complete_encoder),
    layer: List[str] = typer.Option(None, "--layer", "-l", help="Layer; repeat (default: backbone and head where it exists).", autocompletion=complete_layer),
    weights: Optional[Path] = WEIGHTS,
    preprocessing: str = typer.Option("native", "--preprocessing", help="native or rcdm."),
    l2: float = typer.Option(1e-4, "--l2", help="L2 penalty of the logistic regression."),
    out: Path = typer.Option(Path("probes"), "--out", "-o", help="Folder for the probe files (one per layer)."),
    batch_size: int = BATCH,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing probe files."),
    results: Path = RESULTS,
    no_results: bool = NO_RESULTS,
    json_out: bool = JSON,
) -> None:
    """Linear-probe accuracy per layer (features extracted once and cached); saves
    each probe for `rcdm attack --probe`."""
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.encoders import get_registry
    from rcdm_cli.evaluation.features import encode_files
    from rcdm_cli.evaluation.probe import accuracy, fit_probe, image_folder
    from rcdm_cli.fileio import check_writable

    registry = get_registry()
    layers_available, _ = registry.layers(encoder)
    layers = list(layer) if layer else [name for name in ("backbone", "head") if name in layers_available]
    for name in layers:
        if name not in layers_available:
            raise UsageError(f"encoder {encoder!r} has no layer {name!r}; it has: {', '.join(layers_available)}")
    if l2 < 0:
        raise UsageError("--l2 must be non-negative")
    train_paths, train_labels, classes = image_folder(train_dir)
    val_paths, val_labels, val_classes = image_folder(val_dir)
    if val_classes != classes:
        raise UsageError(f"{val_dir} has classes {val_classes}, {train_dir} has {classes}: they must match")
    safe = registry.get(encoder)[1].base
    files = {lay: out / f"{safe}-{lay}.safetensors" for lay in layers}
    check_writable(list(files.values()), overwrite)
    enc = registry.create(encoder, weights_path=weights, preprocessing=preprocessing, device=resolve_device(settings.device), progress=download_progress())
    rows, per_layer = [], {}
    for lay in layers:
        with status(f"extracting {lay} features of {len(train_paths) + len(val_paths)} images"):
            f_train = encode_files(train_paths, enc, lay, batch_size)
            f_val = encode_files(val_paths, enc, lay, batch_size)
        with status(f"fitting the {lay} probe"):
            fitted = fit_probe(f_train, train_labels, classes, l2=l2)
        train_acc, val_acc = accuracy(fitted, f_train, train_labels), accuracy(fitted, f_val, val_labels)
        fitted.info.update(
            encoder=enc.name, weights=enc.weights_id, layer=lay, preprocessing=enc.preprocessing.to_dict(),
            train_top1=train_acc["top1"], val_top1=val_acc["top1"],
        )
        fitted.save(files[lay])
        per_layer[lay] = {"train": train_acc, "val": val_acc, "probe": str(files[lay])}
        rows.append((lay, str(f_train.shape[1]), f"{train_acc['top1']:.3f}", f"{val_acc['top1']:.3f}", f"{val_acc['top5']:.3f}" if "top5" in val_acc else "-", str(files[lay])))
    record = {
        "metric": "probe", "encoder": enc.name, "weights": enc.weights_id, "preprocessing": enc.preprocessing.to_dict(),
        "classes": classes, "train_images": len(train_paths), "val_images": len(val_paths), "l2": l2, "layers": per_layer,
    }
    _report(record, results, no_results, json_out, f"linear probe ({enc.name}, {len(classes)} classes)", rows,
            ("layer", "dim", "train top-1", "val top-1", "val top-5", "probe file"))


@app.command("fid")
def fid(
    samples: Path = typer.Argument(..., help="Folder of generated images."),
    reference: Path = typer.Argument(..., help="Folder of real images."),
    precision_recall: bool = typer.Option(True, "--precision-recall/--no-precision-recall", help="Also precision and recall."),
    results: Path = RESULTS,
    no_results: bool = NO_RESULTS,
    json_out: bool = JSON,
) -> None:
    """FID (and precision/recall) with the standard Inception features (torch-fidelity)."""
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.evaluation.fid import fid as compute

    device = resolve_device(settings.device)
    with status("computing Inception features"):
        values = compute(samples, reference, cuda=device.type == "cuda", precision_recall=precision_recall)
    record = {"metric": "fid", "samples_dir": str(samples), "reference_dir": str(reference), **values}
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    _report(record, results, no_results, json_out, "FID", rows, ("metric", "value"))
