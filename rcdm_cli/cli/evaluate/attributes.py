"""``rcdm evaluate attributes``: which visual attributes the samples of one or more
RCDMs keep, and its tables (shared with ``evaluate table --metric attributes``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.completion import complete_attribute, complete_augmentation
from rcdm_cli.cli.console import log, print_json, settings
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.cli.evaluate.report import finish, print_table, short_checkpoint
from rcdm_cli.cli.options import (
    BATCH,
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


def evaluate_attributes(
    images: List[str] = typer.Argument(..., help="Conditioning images: files, folders, globs, or - to read paths from stdin."),
    checkpoint: Optional[List[str]] = typer.Option(
        None, "--checkpoint", "-c",
        help="released:NAME, a checkpoint file or a run folder; repeat to compare representations "
        "(default: the released model of --encoder/--layer).",
    ),
    encoder: Optional[str] = ENCODER,
    layer: Optional[str] = LAYER,
    weights: Optional[Path] = WEIGHTS,
    preprocessing: Optional[str] = PREPROCESSING,
    n: int = typer.Option(4, "-n", "--num-samples", help="Samples per conditioning image (K, at least 2)."),
    attribute: Optional[List[str]] = typer.Option(
        None, "--attribute", help="An attribute or a group (image, scene); repeat (default: the image group).",
        autocompletion=complete_attribute,
    ),
    augment: Optional[List[str]] = typer.Option(
        None, "--augment", "--augmentation",
        help="Also condition on this augmentation of each image; repeat (the augmentations of `rcdm evaluate invariance`).",
        autocompletion=complete_augmentation,
    ),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use the first N images only."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the numbers as a bar chart (PNG)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --plot file."),
    sampler: str = SAMPLER,
    steps: str = STEPS,
    eta: Optional[float] = ETA,
    seed: int = SEED,
    batch_size: int = BATCH,
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    guidance: float = GUIDANCE,
    weight_set: Optional[str] = WEIGHT_SET,
    results: Path = typer.Option(Path("rcdm-results.jsonl"), "--results", help="JSON-lines file the results are appended to (one record per representation)."),
    no_results: bool = typer.Option(False, "--no-results", help="Do not append to the results file."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
) -> None:
    """Which visual attributes the samples keep: per attribute and representation, the
    rank of the conditioning image by attribute distance to its samples (MRR against
    chance) and the spread of the attribute among one image's samples (0: fixed by the
    representation, 1: free). With --augment, how much of each augmentation's change
    the samples carry."""
    from rcdm_cli.cli.common import sample_with_progress
    from rcdm_cli.cli.evaluate.progress import encoding_with_progress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.evaluation.attributes import (
        attribute_record, check_augmentations, measure_attributes, select_attributes,
    )
    from rcdm_cli.evaluation.charts import save_attribute_chart
    from rcdm_cli.evaluation.inputs import evaluation_images
    from rcdm_cli.evaluation.results import append_result
    from rcdm_cli.fileio import check_writable
    from rcdm_cli.inputs import load_image
    from rcdm_cli.pipeline.runner import RCDMRun
    from rcdm_cli.pipeline.sampling import SamplingOptions

    specs = select_attributes(attribute)
    augs = check_augmentations(augment or [])
    if n < 2:
        raise UsageError(f"-n must be at least 2 (the spread compares samples of one image), got {n}")
    paths = evaluation_images(images, max_images)
    if len(paths) < 2:
        raise UsageError("measuring attributes needs at least two conditioning images")
    if plot is not None:
        check_writable([plot], overwrite)
    checkpoints = list(dict.fromkeys(checkpoint or [None]))
    if len(checkpoints) > 1 and (encoder or layer or weights or preprocessing):
        raise UsageError("--encoder, --layer, --weights and --preprocessing apply to one --checkpoint; each checkpoint brings its own")
    device = resolve_device(settings.device)
    runs = [
        RCDMRun.prepare(
            checkpoint=c, encoder=encoder, layer=layer, weights=weights, preprocessing=preprocessing, device=device,
            download_progress=download_progress(), weight_set=weight_set,
        )
        for c in checkpoints
    ]
    options = SamplingOptions(
        sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision, compile=compile_, guidance=guidance,
    )
    per_run = [run.resolve(options) for run in runs]  # "auto" may mean another sampler for each model
    steps_per_sample = [run.check(None, n, o).num_timesteps for run, o in zip(runs, per_run)]  # all checked before work
    pictures = [load_image(p) for p in paths]
    records = []
    for run, options, calls in zip(runs, per_run, steps_per_sample):
        encode = encoding_with_progress(run, batch_size)
        measured = measure_attributes(
            run, pictures, specs, n, options, augmentations=augs,
            sample=lambda reps, count, opts, run=run, calls=calls: sample_with_progress(run, reps, count, opts, calls),
            encode=lambda images, encode=encode: encode(images, "images"),
            event=lambda message: log.info("%s", message),
        )
        records.append(append_result(None if no_results else results, attribute_record(run, measured, paths, options, n)))
    if plot is not None:
        save_attribute_chart(plot, chart_labels(records))
    if json_out:
        print_json({"metric": "attributes", "representations": records, "plot": str(plot) if plot else None})
    else:
        print_attribute_tables(records)
    finish(
        None if no_results else f"appended {len(records)} record(s) to {results}",
        f"chart: {plot.resolve()}" if plot is not None else None,
    )


def _cell(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_attribute_tables(records: list[dict]) -> None:
    """The attribute table (rows: attributes; a column per representation: MRR and
    spread) and, with augmentations, the carried table, each within 80 columns."""
    labels = _labels(records)
    attributes = list(dict.fromkeys(a for r in records for a in r["attributes"]))
    columns = ["attribute", "MRR\nceiling"] + [f"{_header(label)}\nMRR / spread" for label in labels]
    rows = []
    for name in attributes:
        ceilings = {(r["attributes"].get(name) or {}).get("ceiling_mrr") for r in records} - {None}
        row = [name, _cell(ceilings.pop(), 3) if len(ceilings) == 1 else "-"]
        for r in records:
            score = r["attributes"].get(name) or {}
            row.append(f"{_cell(score.get('mrr'), 3)} / {_cell(score.get('spread'))}")
        rows.append(row)
    first = {key: (next(iter(r["attributes"].values()), None) or {}).get(key) for r in records for key in ("chance_mrr", "chance_spread")}
    shared = {(r.get("images"), r.get("samples_per_image")) for r in records}
    caption = "MRR ceiling: samples that reproduce the attribute exactly (images that share it tie); spread: 0 = fixed by the representation, 1 = free"
    if len(shared) == 1:
        images, k = next(iter(shared))
        caption = (f"{images} images × {k} samples; chance: MRR {_cell(first['chance_mrr'], 3)}, "
                   f"spread {_cell(first['chance_spread'])}; " + caption)
    print_table("what the samples keep (retrieval by attribute, spread)", columns, rows, caption, whole=(0,))

    pairs = list(dict.fromkeys(
        (aug, attr) for r in records for aug, block in (r.get("augmentations") or {}).items()
        for attr in block["attributes"] if attr in block.get("changes", [])
    ))
    if not pairs:
        return
    columns = ["augmentation:\nattribute"] + [f"{_header(label)}\ncarried [95% CI]" for label in labels]
    rows = []
    for aug, attr in pairs:
        row = [f"{aug}:\n{attr}"]
        for r in records:
            found = ((r.get("augmentations") or {}).get(aug) or {}).get("attributes", {}).get(attr) or {}
            carried = found.get("carried")
            row.append("-" if carried is None else f"{carried:.2f}\n[{found['ci_low']:.2f}, {found['ci_high']:.2f}]")
        rows.append(row)
    print_table(
        "what the samples carry of each augmentation", columns, rows,
        "carried: the samples' change of the attribute over the image's (1 = not invariant, 0 = invariant)", whole=(0,),
    )


def _header(label: str, width: int = 16) -> str:
    """A representation's name over lines of at most ``width`` characters (numbers
    never break, so a column is as wide as its header's longest line): broken after
    each '/', long parts folded."""
    parts = [p + "/" for p in label.split("/")[:-1]] + [label.split("/")[-1]]
    lines = [part[i : i + width] for part in parts for i in range(0, len(part), width)]
    return "\n".join(lines)


def chart_labels(records: list[dict]) -> list[dict]:
    """The records with the labels the tables use, for the chart's legend."""
    return [{**r, "label": label} for r, label in zip(records, _labels(records))]


def _labels(records: list[dict]) -> list[str]:
    """encoder/layer, with the checkpoint's name where two records share one."""
    plain = [r.get("label") or f"{r.get('encoder')}/{r.get('layer')}" for r in records]
    return [
        f"{p} ({short_checkpoint((r.get('checkpoint') or {}).get('spec'))})" if plain.count(p) > 1 else p
        for p, r in zip(plain, records)
    ]
