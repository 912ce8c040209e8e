"""``rcdm evaluate attributes``: which visual attributes the samples of one or more
RCDMs keep, and its tables (shared with ``evaluate table --metric attributes``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.completion import complete_attribute, complete_augmentation
from rcdm_cli.cli.console import log, print_json
from rcdm_cli.cli.evaluate.report import NO_RESULTS, finish, print_table, short_checkpoint
from rcdm_cli.cli.options import ModelChoice, SamplingChoice, model_and_sampling
from rcdm_cli.errors import UsageError

CHECKPOINTS = typer.Option(
    None, "--checkpoint", "-c",
    help="released:NAME, a checkpoint file or a run folder; repeat to compare representations "
    "(default: the released model of --encoder/--layer).",
)


SAMPLES = typer.Option(4, "-n", "--num-samples", help="Samples per conditioning image (K, at least 2).")
ATTRIBUTE = typer.Option(
    None, "--attribute", help="An attribute or a group (image, scene); repeat (default: the image group).",
    autocompletion=complete_attribute,
)
AUGMENT = typer.Option(
    None, "--augment", "--augmentation",
    help="Also condition on this augmentation of each image; repeat (the augmentations of `rcdm evaluate invariance`).",
    autocompletion=complete_augmentation,
)
RESULTS = typer.Option(
    Path("rcdm-results.jsonl"), "--results",
    help="JSON-lines file the results are appended to (one record per representation).",
)
JSON = typer.Option(False, "--json", help="Print the results as JSON on stdout.")


@model_and_sampling(checkpoint=(Optional[List[str]], CHECKPOINTS))  # repeatable: it compares models
def evaluate_attributes(
    images: List[str] = typer.Argument(
        ..., help="Conditioning images: files, folders, globs, or - to read paths from stdin."
    ),
    model: ModelChoice = None,
    n: int = SAMPLES,
    attribute: Optional[List[str]] = ATTRIBUTE,
    augment: Optional[List[str]] = AUGMENT,
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use the first N images only."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the numbers as a bar chart (PNG)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --plot file."),
    sampling: SamplingChoice = None,
    results: Path = RESULTS,
    no_results: bool = NO_RESULTS,
    json_out: bool = JSON,
) -> None:
    """Which visual attributes the samples keep: per attribute and representation, the
    rank of the conditioning image by attribute distance to its samples (MRR against
    chance) and the spread of the attribute among one image's samples (0: fixed by the
    representation, 1: free). With --augment, how much of each augmentation's change
    the samples carry."""
    from rcdm_cli.cli.common import prepare_run
    from rcdm_cli.evaluation.attributes import check_augmentations, select_attributes
    from rcdm_cli.evaluation.charts import save_attribute_chart
    from rcdm_cli.evaluation.results import append_result
    from rcdm_cli.fileio import check_writable
    from rcdm_cli.inputs import load_image

    specs, augs = select_attributes(attribute), check_augmentations(augment or [])
    paths = _images(images, max_images, n)
    if plot is not None:
        check_writable([plot], overwrite)
    # every model checked before any work ("auto" may mean another sampler for each)
    prepared = [prepare_run(one, sampling, n) for one in _models(model)]
    pictures = [load_image(p) for p in paths]
    records = [
        append_result(None if no_results else results, _measure(*run, pictures, paths, specs, augs, n))
        for run in prepared
    ]
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


def _images(images: list[str], max_images: int | None, n: int) -> list[Path]:
    """The conditioning images, refused when too few samples or images leave nothing
    to compare (the spread compares samples of one image, the rank the images)."""
    from rcdm_cli.evaluation.inputs import evaluation_images

    if n < 2:
        raise UsageError(f"-n must be at least 2 (the spread compares samples of one image), got {n}")
    paths = evaluation_images(images, max_images)
    if len(paths) < 2:
        raise UsageError("measuring attributes needs at least two conditioning images")
    return paths


def _models(model: ModelChoice) -> list[ModelChoice]:
    """One model per --checkpoint (each once); the encoder options only go with one."""
    checkpoints = list(dict.fromkeys(model.checkpoint or [None]))
    if len(checkpoints) > 1 and model.names_an_encoder:
        raise UsageError(
            "--encoder, --layer, --weights and --preprocessing apply to one --checkpoint; "
            "each checkpoint brings its own"
        )
    return [replace(model, checkpoint=c) for c in checkpoints]


def _measure(run, options, diffusion, pictures, paths, specs, augs, n: int) -> dict:
    """One representation's record, its encoding and sampling under progress bars."""
    from rcdm_cli.cli.common import sample_with_progress
    from rcdm_cli.cli.evaluate.progress import encoding_with_progress
    from rcdm_cli.evaluation.attributes import attribute_record, measure_attributes

    encode = encoding_with_progress(run, options.batch_size)
    measured = measure_attributes(
        run, pictures, specs, n, options, augmentations=augs,
        sample=lambda reps, count, opts: sample_with_progress(run, reps, count, opts, diffusion.num_timesteps),
        encode=lambda images: encode(images, "images"),
        event=lambda message: log.info("%s", message),
    )
    return attribute_record(run, measured, paths, options, n)


def _cell(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_attribute_tables(records: list[dict]) -> None:
    """The attribute table (rows: attributes; a column per representation: MRR and
    spread) and, with augmentations, the carried table, each within 80 columns."""
    labels = _labels(records)
    print_table("what the samples keep (retrieval by attribute, spread)", *_kept(records, labels), whole=(0,))
    carried = _carried(records, labels)
    if carried:
        print_table(
            "what the samples carry of each augmentation", *carried,
            "carried: the samples' change of the attribute over the image's (1 = not invariant, 0 = invariant)",
            whole=(0,),
        )


def _kept(records: list[dict], labels: list[str]) -> tuple[list[str], list[list[str]], str]:
    """Columns, rows and caption of the attribute table."""
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
    first = {
        key: (next(iter(r["attributes"].values()), None) or {}).get(key)
        for r in records for key in ("chance_mrr", "chance_spread")
    }
    shared = {(r.get("images"), r.get("samples_per_image")) for r in records}
    caption = (
        "MRR ceiling: samples that reproduce the attribute exactly (images that share it tie); "
        "spread: 0 = fixed by the representation, 1 = free"
    )
    if len(shared) == 1:
        images, k = next(iter(shared))
        caption = (f"{images} images × {k} samples; chance: MRR {_cell(first['chance_mrr'], 3)}, "
                   f"spread {_cell(first['chance_spread'])}; " + caption)
    return columns, rows, caption


def _carried(records: list[dict], labels: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """Columns and rows of the carried table; None without an augmentation that changes an attribute."""
    pairs = list(dict.fromkeys(
        (aug, attr) for r in records for aug, block in (r.get("augmentations") or {}).items()
        for attr in block["attributes"] if attr in block.get("changes", [])
    ))
    if not pairs:
        return None
    columns = ["augmentation:\nattribute"] + [f"{_header(label)}\ncarried [95% CI]" for label in labels]
    rows = []
    for aug, attr in pairs:
        row = [f"{aug}:\n{attr}"]
        for r in records:
            found = ((r.get("augmentations") or {}).get(aug) or {}).get("attributes", {}).get(attr) or {}
            carried = found.get("carried")
            row.append("-" if carried is None else f"{carried:.2f}\n[{found['ci_low']:.2f}, {found['ci_high']:.2f}]")
        rows.append(row)
    return columns, rows


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
