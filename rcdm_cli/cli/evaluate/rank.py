"""``rcdm evaluate rank``: faithfulness, and its table (shared with ``evaluate table``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.evaluate.report import JSON, NO_RESULTS, RESULTS, number, report, short_checkpoint
from rcdm_cli.cli.options import ModelChoice, SamplingChoice, model_and_sampling

TITLE = "faithfulness (rank of the conditioning image)"


@model_and_sampling
def rank(
    images: List[str] = typer.Argument(
        ..., help="Conditioning images: files, folders, globs, or - to read paths from stdin."
    ),
    n: int = typer.Option(4, "-n", "--num-samples", help="Samples per conditioning image (K)."),
    metric: str = typer.Option("cosine", "--metric", help="cosine or l2."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Use the first N images only."),
    model: ModelChoice = None,
    sampling: SamplingChoice = None,
    results: Path = RESULTS,
    no_results: bool = NO_RESULTS,
    json_out: bool = JSON,
) -> None:
    """Faithfulness: rank each conditioning image among all of them by similarity to
    its samples' representations (mean rank, MRR, top-1, top-5)."""
    from rcdm_cli.cli.common import prepare_run, sample_with_progress
    from rcdm_cli.cli.evaluate.progress import encoding_with_progress
    from rcdm_cli.evaluation.faithfulness import check_rank_request, measure_faithfulness
    from rcdm_cli.evaluation.inputs import evaluation_images

    paths = evaluation_images(images, max_images)
    check_rank_request(metric, paths)
    run, options, diffusion = prepare_run(model, sampling, n)  # every check before any weights load
    record = measure_faithfulness(
        run, paths, n, options, metric, encode=encoding_with_progress(run, sampling.batch_size),
        sample=lambda reps, count, opts: sample_with_progress(run, reps, count, opts, diffusion.num_timesteps),
    )
    columns, cells, caption = rank_view([{**record, "checkpoint": run.spec}])
    report(record, results, no_results, json_out, TITLE, cells, columns, caption)


def rank_view(rows: list[dict]) -> tuple[tuple[str, ...], list[tuple[str, ...]], str | None]:
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
            f"{r.get('encoder')}/{r.get('layer')}", short_checkpoint(r.get("checkpoint")),
            f"{r.get('images')} × {r.get('samples_per_image')}",
            number(r.get("mean_rank"), 2), number(r.get("mrr"), 3), number(r.get("top1"), 3), number(r.get("top5"), 3),
        )
        if not shared:
            cell += (f"{number(r.get('chance_mean_rank'), 2)} / {number(r.get('chance_mrr'), 3)}",)
        cells.append(cell)
    caption = None
    if shared and rows:
        rank, mrr, top1 = next(iter(chances))
        caption = f"chance: mean rank {number(rank, 2)}, MRR {number(mrr, 3)}, top-1 {number(top1, 3)}"
    return columns, cells, caption
