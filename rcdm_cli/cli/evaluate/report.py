"""How every evaluation ends: the record appended to the results file, a table on
stdout (or the record as ``--json``), and one line on stderr that says what was
written where."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from rcdm_cli.cli.console import log, print_json

RESULTS = typer.Option(
    Path("rcdm-results.jsonl"), "--results", help="JSON-lines file the result is appended to."
)
NO_RESULTS = typer.Option(False, "--no-results", help="Do not append to the results file.")
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout.")


def print_table(title: str, columns, rows, caption: str | None = None, whole: tuple[int, ...] = ()) -> None:
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


def report(
    record: dict, results: Path, no_results: bool, json_out: bool, title: str, rows: list[tuple[str, ...]],
    columns: tuple[str, ...], caption: str | None = None, written: tuple[str, ...] = (),
) -> None:
    """Append ``record``, show it, and end with the line of what was written:
    ``written`` (the command's own files) and the results file."""
    from rcdm_cli.evaluation.results import append_result

    record = append_result(None if no_results else results, record)
    if json_out:
        print_json(record)
    else:
        print_table(title, columns, rows, caption)
    finish(*written, None if no_results else f"appended to {results}")


def finish(*written: str | None) -> None:
    """The command's last line: what it wrote where (nothing when it wrote nothing)."""
    parts = [w for w in written if w]
    if parts:
        log.info("%s", "; ".join(parts))


def number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def short_checkpoint(spec: str | None) -> str:
    """``released:NAME`` and ``init:PRESET`` as they are; a path by its last two parts
    (the table has 80 columns; the results file keeps the whole path)."""
    if not spec:
        return "-"
    if spec.startswith(("released:", "init:")):
        return spec
    return "/".join(Path(spec).parts[-2:])
