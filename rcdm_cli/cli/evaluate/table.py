"""``rcdm evaluate table``: the paper's tables from a results file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rcdm_cli.cli.console import print_json
from rcdm_cli.cli.evaluate.report import JSON, finish, number, print_table
from rcdm_cli.errors import UsageError


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
    from rcdm_cli.fileio import check_writable

    if metric not in ("rank", "probe", "attributes"):
        raise UsageError(f"--metric must be rank, probe or attributes, got {metric!r}")
    if plot is not None and metric != "attributes":
        raise UsageError("--plot draws the attribute chart: use it with --metric attributes")
    if plot is not None:
        check_writable([plot], overwrite)
    records = read_results(results_file)
    rows = {"rank": rank_rows, "attributes": attribute_rows, "probe": lambda r: probe_rows(r)[0]}[metric](records)
    if not rows:
        raise UsageError(f"{results_file} holds no {metric} results; run `rcdm evaluate {metric}` with --results {results_file}")
    if plot is not None:
        from rcdm_cli.cli.evaluate.attributes import chart_labels
        from rcdm_cli.evaluation.charts import save_attribute_chart

        save_attribute_chart(plot, chart_labels(rows))
    if json_out:
        print_json({"metric": metric, "results_file": str(results_file), "rows": rows})
    elif metric == "attributes":
        from rcdm_cli.cli.evaluate.attributes import print_attribute_tables

        print_attribute_tables(rows)
    else:
        print_table(*(_rank_table(rows) if metric == "rank" else _probe_table(records)))
    finish(f"chart: {plot.resolve()}" if plot is not None else None)


def _rank_table(rows: list[dict]):
    from rcdm_cli.cli.evaluate.rank import TITLE, rank_view

    columns, cells, caption = rank_view(rows)
    return TITLE, columns, cells, caption


def _probe_table(records: list[dict]):
    from rcdm_cli.evaluation.results import probe_rows

    rows, layers = probe_rows(records)
    columns = ("encoder", "weights", "classes", *(f"{lay} val top-1" for lay in layers))
    cells = [
        (str(r["encoder"]), str(r["weights"] or "-"), str(r["classes"] or "-"), *(number(r["val_top1"].get(lay), 3) for lay in layers))
        for r in rows
    ]
    return "linear probe accuracy", columns, cells, None
