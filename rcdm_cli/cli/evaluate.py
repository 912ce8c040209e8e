"""``rcdm evaluate``: rank/MRR faithfulness, invariance, linear probes, FID.

Every command prints a table (or ``--json``) and appends its result to a JSON-lines
file (``--results``, default ``rcdm-results.jsonl``) so batch jobs can collect them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.completion import complete_augmentation, complete_encoder, complete_layer
from rcdm_cli.cli.console import log, print_json, settings, status
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.cli.options import (
    BATCH,
    CHECKPOINT,
    COMPILE,
    ENCODER,
    ETA,
    GUIDANCE,
    LAYER,
    PRECISION,
    PREPROCESSING,
    SAMPLER,
    SEED,
    STEPS,
    WEIGHT_SET,
    WEIGHTS,
)
from rcdm_cli.errors import UsageError

app = typer.Typer(help="Put numbers on what the pictures show.", no_args_is_help=True)

RESULTS = typer.Option(
    Path("rcdm-results.jsonl"), "--results", help="JSON-lines file the result is appended to."
)
NO_RESULTS = typer.Option(False, "--no-results", help="Do not append to the results file.")
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def _print_table(title: str, columns, rows, caption: str | None = None, whole: tuple[int, ...] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = [tuple(r) for r in rows]
    table = Table(title=title, caption=caption)
    for i, c in enumerate(columns):
        # numbers (and the columns in ``whole``) never break; names and paths fold (not
        # "…") when 80 columns are too few
        short = i in whole or all(len(r[i]) <= 14 for r in rows)
        widest = max((len(line) for r in rows for line in r[i].splitlines()), default=0)
        table.add_column(
            c, no_wrap=short, overflow="fold", justify="right" if short and i else "left",
            min_width=widest if i in whole else None,
        )
    for row in rows:
        table.add_row(*row)
    # a terminal's width is respected; a log file or a pipe gets the whole table
    Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160).print(table)


def _report(
    record: dict, results: Path, no_results: bool, json_out: bool, title: str, rows: list[tuple[str, ...]],
    columns: tuple[str, ...], caption: str | None = None,
) -> None:
    from rcdm_cli.evaluation.results import append_result

    record = append_result(None if no_results else results, record)
    if json_out:
        print_json(record)
        return
    _print_table(title, columns, rows, caption)
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


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _short_checkpoint(spec: str | None) -> str:
    """``released:NAME`` and ``init:PRESET`` as they are; a path by its last two parts
    (the table has 80 columns; the results file keeps the whole path)."""
    if not spec:
        return "-"
    if spec.startswith(("released:", "init:")):
        return spec
    return "/".join(Path(spec).parts[-2:])


def _rank_view(rows: list[dict]) -> tuple[tuple[str, ...], list[tuple[str, ...]], str | None]:
    """The faithfulness table in 80 columns. Chance depends only on the number of
    images, so when every row has the same it is said once, under the table."""
    chances = {(r.get("chance_mean_rank"), r.get("chance_mrr"), r.get("chance_top1")) for r in rows}
    shared = len(chances) == 1
    columns = ("representation", "checkpoint", "images\n× samples", "mean\nrank", "MRR", "top-1", "top-5")
    if not shared:
        columns += ("chance\nrank / MRR",)
    cells = []
    for r in rows:
        cell = (
            f"{r.get('encoder')}/{r.get('layer')}", _short_checkpoint(r.get("checkpoint")),
            f"{r.get('images')} × {r.get('samples_per_image')}",
            _number(r.get("mean_rank"), 2), _number(r.get("mrr"), 3), _number(r.get("top1"), 3), _number(r.get("top5"), 3),
        )
        if not shared:
            cell += (f"{_number(r.get('chance_mean_rank'), 2)} / {_number(r.get('chance_mrr'), 3)}",)
        cells.append(cell)
    caption = None
    if shared and rows:
        rank, mrr, top1 = next(iter(chances))
        caption = f"chance: mean rank {_number(rank, 2)}, MRR {_number(mrr, 3)}, top-1 {_number(top1, 3)}"
    return columns, cells, caption


@app.command("rank")
def rank(
    data: Path = typer.Argument(..., help="Conditioning images: a folder, file or glob, or - to read paths from stdin."),
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
    guidance: float = GUIDANCE,
    weight_set: Optional[str] = WEIGHT_SET,
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
        device=resolve_device(settings.device), download_progress=download_progress(), weight_set=weight_set,
    )
    options = run.resolve(SamplingOptions(
        sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision, compile=compile_, guidance=guidance,
    ))
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
        "weights": run.encoder_info().get("weights"),
        "layer": run.plan.layer,
        "similarity": metric,
        **summary,  # "images" is the count N
        "sampling": {**options.to_dict(), "network_calls": diffusion.num_timesteps},
        "image_paths": [str(p) for p in paths],
        "ranks": table.tolist(),  # expected ranks, ties broken at random
    }
    row = {"encoder": run.plan.encoder, "layer": run.plan.layer, "checkpoint": run.spec, **summary}
    columns, cells, caption = _rank_view([row])
    _report(record, results, no_results, json_out, "faithfulness (rank of the conditioning image)", cells, columns, caption)


@app.command("invariance")
def invariance(
    data: Path = typer.Argument(..., help="Images: a folder, file or glob, or - to read paths from stdin."),
    encoder: str = typer.Option(..., "--encoder", "-e", help="Encoder to measure.", autocompletion=complete_encoder),
    layer: List[str] = typer.Option(None, "--layer", "-l", help="Layer; repeat (default: backbone and head where it exists).", autocompletion=complete_layer),
    weights: Optional[Path] = WEIGHTS,
    preprocessing: str = typer.Option("native", "--preprocessing", help="native or rcdm."),
    augmentation: List[str] = typer.Option(None, "--augmentation", "-a", help="Augmentation; repeat (default: all).", autocompletion=complete_augmentation),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use the first N images only."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c", help="Also sample an RCDM per augmentation of the first image."),
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
    from rcdm_cli.encoders import get_registry
    from rcdm_cli.evaluation.augmentations import AUGMENTATIONS
    from rcdm_cli.evaluation.invariance import invariance as measure
    from rcdm_cli.inputs import load_image

    registry = get_registry()
    layers = _layers(registry, encoder, layer)
    augs = list(augmentation) if augmentation else list(AUGMENTATIONS)
    for name in augs:
        if name not in AUGMENTATIONS:
            raise UsageError(f"unknown augmentation {name!r}; choose from: {', '.join(AUGMENTATIONS)}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    paths = _images(data, max_images)
    pictures = [load_image(p) for p in paths]
    grid = None
    if checkpoint is not None:
        grid = _GridRun.prepare(checkpoint, encoder, weights, n, sampler, steps, eta, seed, batch_size, precision, out, overwrite)
    device = resolve_device(settings.device)
    enc = registry.create(encoder, weights_path=weights, preprocessing=preprocessing, device=device, progress=download_progress())
    with status(f"measuring {len(augs)} augmentations on {len(paths)} images"):
        table = measure(pictures, enc, layers, augs, seed=seed, batch_size=batch_size)
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
    if grid is not None:
        record.update(grid.write(pictures[0], augs, seed))
    rows = [
        (name, "yes" if AUGMENTATIONS[name].trained else "no", *(f"{table[name][lay]['mean']:.3f} ± {table[name][lay]['std']:.3f}" for lay in layers))
        for name in augs
    ]
    _report(record, results, no_results, json_out, f"cosine similarity to the augmented view ({enc.name})", rows, ("augmentation", "trained with", *layers))


class _GridRun:
    """RCDM samples from each augmented view of one image, in one grid."""

    def __init__(self, run, options, diffusion, n: int, path: Path):
        self.run, self.options, self.diffusion, self.n, self.path = run, options, diffusion, n, path

    @classmethod
    def prepare(cls, checkpoint, encoder, weights, n, sampler, steps, eta, seed, batch_size, precision, out, overwrite):
        """Every check the grid needs, before any weights load."""
        from rcdm_cli.devices import resolve_device
        from rcdm_cli.fileio import check_writable
        from rcdm_cli.pipeline.runner import RCDMRun
        from rcdm_cli.pipeline.sampling import SamplingOptions

        run = RCDMRun.prepare(
            checkpoint=checkpoint, encoder=encoder, weights=weights, device=resolve_device(settings.device),
            download_progress=download_progress(),
        )
        options = run.resolve(SamplingOptions(sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision))
        diffusion = run.check(None, n, options)
        path = out / "augmentations.png"
        check_writable([path], overwrite)
        return cls(run, options, diffusion, n, path)

    def write(self, picture, augs: list[str], seed: int) -> dict:
        from rcdm_cli.cli.common import sample_with_progress
        from rcdm_cli.evaluation.augmentations import AUGMENTATIONS
        from rcdm_cli.evaluation.invariance import augmented
        from rcdm_cli.imaging import make_grid, save_png, to_pil
        from rcdm_cli.preprocessing import diffusion_target

        run, n = self.run, self.n
        views = [picture] + [augmented(picture, AUGMENTATIONS[a], seed, 0) for a in augs]
        reps = run.encode(views, self.options.batch_size)
        samples = sample_with_progress(run, reps, n, self.options, self.diffusion.num_timesteps, same_noise=True).samples
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
            "sampling": {**self.options.to_dict(), "same_noise": True, "network_calls": self.diffusion.num_timesteps},
        }


def _layers(registry, encoder: str, chosen: list[str] | None) -> list[str]:
    """The layers asked for (default: backbone and head where the encoder has them)."""
    available, _ = registry.layers(encoder)
    layers = list(dict.fromkeys(chosen)) if chosen else [name for name in ("backbone", "head") if name in available]
    if not layers:
        raise UsageError(f"encoder {encoder!r} has neither a backbone nor a head layer; pick layers with --layer: {', '.join(available)}")
    for name in layers:
        if name not in available:
            raise UsageError(f"encoder {encoder!r} has no layer {name!r}; it has: {', '.join(available)}")
    return layers


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
    from rcdm_cli.evaluation.features import encode_file_layers
    from rcdm_cli.evaluation.probe import accuracy, fit_probe, image_folder
    from rcdm_cli.fileio import check_writable

    registry = get_registry()
    layers = _layers(registry, encoder, layer)
    if l2 < 0:
        raise UsageError("--l2 must be non-negative")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    train_paths, train_labels, classes = image_folder(train_dir)
    val_paths, val_labels, val_classes = image_folder(val_dir)
    if val_classes != classes:
        raise UsageError(f"{val_dir} has classes {val_classes}, {train_dir} has {classes}: they must match")
    stem = probe_stem(encoder, weights)
    files = {lay: out / f"{stem}-{lay}.safetensors" for lay in layers}
    check_writable(list(files.values()), overwrite)
    enc = registry.create(encoder, weights_path=weights, preprocessing=preprocessing, device=resolve_device(settings.device), progress=download_progress())
    with status(f"extracting {', '.join(layers)} features of {len(train_paths) + len(val_paths)} images"):
        f_train = encode_file_layers(train_paths, enc, layers, batch_size)
        f_val = encode_file_layers(val_paths, enc, layers, batch_size)
    cached = [lay for lay in layers if lay in f_train.cached and lay in f_val.cached]
    if cached:
        log.info("features of %s from the cache", ", ".join(cached))
    rows, per_layer = [], {}
    for lay in layers:
        train_feats, val_feats = f_train.layers[lay], f_val.layers[lay]
        with status(f"fitting the {lay} probe"):
            fitted = fit_probe(train_feats, train_labels, classes, l2=l2)
        train_acc, val_acc = accuracy(fitted, train_feats, train_labels), accuracy(fitted, val_feats, val_labels)
        fitted.info.update(
            encoder=enc.name, weights=enc.weights_id, weights_file=enc.weights_file, layer=lay,
            preprocessing=enc.preprocessing.to_dict(), train_top1=train_acc["top1"], val_top1=val_acc["top1"],
        )
        fitted.save(files[lay])
        per_layer[lay] = {"train": train_acc, "val": val_acc, "probe": str(files[lay]), "cached_features": lay in cached}
        rows.append((lay, str(train_feats.shape[1]), f"{train_acc['top1']:.3f}", f"{val_acc['top1']:.3f}", f"{val_acc['top5']:.3f}" if "top5" in val_acc else "-", str(files[lay])))
    record = {
        "metric": "probe", "encoder": enc.name, "weights": enc.weights_id, "preprocessing": enc.preprocessing.to_dict(),
        "classes": classes, "train_images": len(train_paths), "val_images": len(val_paths), "l2": l2, "layers": per_layer,
    }
    _report(record, results, no_results, json_out, f"linear probe ({enc.name}, {len(classes)} classes)", rows,
            ("layer", "dim", "train top-1", "val top-1", "val top-5", "probe file"))


def probe_stem(encoder: str, weights: Path | None) -> str:
    """The file-name stem of an encoder's probes: its name, plus the weights variant
    or the local weights file's stem, so probes of different weights do not collide
    (``dino-head``, ``dino-vitb8-head``, ``timm-resnet50-head``)."""
    import re

    from rcdm_cli.encoders import EncoderName

    parsed = EncoderName.parse(encoder)
    parts = [parsed.base, parsed.argument, parsed.variant, weights.stem if weights is not None else None]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(p for p in parts if p))


@app.command("fid")
def fid(
    samples: Path = typer.Argument(..., help="Folder of generated images."),
    reference: Path = typer.Argument(..., help="Folder of real images."),
    precision_recall: bool = typer.Option(False, "--precision-recall/--no-precision-recall", help="Also precision and recall (downloads VGG-16 weights as well)."),
    size: Optional[int] = typer.Option(None, "--size", help="Square size both folders are brought to when their images differ (default: the samples' own size, else 299)."),
    results: Path = RESULTS,
    no_results: bool = NO_RESULTS,
    json_out: bool = JSON,
) -> None:
    """FID (and, on request, precision/recall) with the standard Inception features (torch-fidelity)."""
    import contextlib

    from rcdm_cli.devices import resolve_device
    from rcdm_cli.evaluation import fid as fid_lib
    from rcdm_cli.inputs import list_images

    fid_lib.check_folders(samples, reference, size)
    tf = fid_lib.torch_fidelity()  # the missing extra is reported before any work
    device = resolve_device(settings.device)
    with contextlib.ExitStack() as stack:
        with _FolderProgress("resizing images to one size") as progress:
            inputs = stack.enter_context(fid_lib.uniform_inputs(tf, samples, reference, size, progress))
        if inputs.resized:
            log.info("images brought to %d x %d (%s)", inputs.size, inputs.size, inputs.resized)
        with status("computing Inception features" + (" and VGG-16 features" if precision_recall else "")):
            values = fid_lib.compute(tf, inputs, cuda=device.type == "cuda", precision_recall=precision_recall)
    values.update(samples=len(list_images(samples)), reference=len(list_images(reference)), size=inputs.size)
    record = {"metric": "fid", "samples_dir": str(samples), "reference_dir": str(reference), "resized": inputs.resized, **values}
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    _report(record, results, no_results, json_out, "FID", rows, ("metric", "value"))


class _FolderProgress:
    """A progress bar per folder being copied, opened when the first image of a folder
    is done (the total is known only then) and closed before the next display."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None

    def __enter__(self) -> "_FolderProgress":
        return self

    def __call__(self, done: int, total: int) -> None:
        from rcdm_cli.cli.console import StepProgress

        if self.bar is None or done == 1:
            self.__exit__(None, None, None)
            self.bar = StepProgress(self.description, total).__enter__()
        self.bar.update(done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None


@app.command("table")
def table(
    results_file: Path = typer.Argument(Path("rcdm-results.jsonl"), help="A JSON-lines results file written by the evaluate commands."),
    metric: str = typer.Option("rank", "--metric", help="rank (the faithfulness table), probe (linear-probe accuracy per layer) or attributes (what the samples keep, per attribute)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="With --metric attributes: also draw the bar chart (PNG)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --plot file."),
    json_out: bool = JSON,
) -> None:
    """The paper's tables from collected results: rows = encoder and layer, columns
    mean rank / MRR / top-1 / top-5 (or probe accuracy per layer, or per attribute
    MRR and spread). The latest record of each row wins."""
    from rcdm_cli.evaluation.results import attribute_rows, probe_rows, rank_rows, read_results

    if metric not in ("rank", "probe", "attributes"):
        raise UsageError(f"--metric must be rank, probe or attributes, got {metric!r}")
    if plot is not None and metric != "attributes":
        raise UsageError("--plot draws the attribute chart: use it with --metric attributes")
    if plot is not None:
        from rcdm_cli.fileio import check_writable

        check_writable([plot], overwrite)
    records = read_results(results_file)
    if metric == "attributes":
        rows = attribute_rows(records)
    elif metric == "rank":
        rows = rank_rows(records)
        columns, cells, caption = _rank_view(rows)
        title = "faithfulness (rank of the conditioning image)"
    else:
        rows, layers = probe_rows(records)
        columns = ("encoder", "weights", "classes", *(f"{lay} val top-1" for lay in layers))
        cells = [
            (str(r["encoder"]), str(r["weights"] or "-"), str(r["classes"] or "-"), *(_number(r["val_top1"].get(lay), 3) for lay in layers))
            for r in rows
        ]
        title, caption = "linear probe accuracy", None
    if not rows:
        raise UsageError(f"{results_file} holds no {metric} results; run `rcdm evaluate {metric}` with --results {results_file}")
    if metric == "attributes":
        from rcdm_cli.cli.attributes import chart_labels, print_attribute_tables
        from rcdm_cli.evaluation.charts import save_attribute_chart

        if plot is not None:
            save_attribute_chart(plot, chart_labels(rows))
            log.info("chart: %s", plot.resolve())
        if json_out:
            print_json({"metric": metric, "results_file": str(results_file), "rows": rows})
        else:
            print_attribute_tables(rows)
        return
    if json_out:
        print_json({"metric": metric, "results_file": str(results_file), "rows": rows})
        return
    _print_table(title, columns, cells, caption)
