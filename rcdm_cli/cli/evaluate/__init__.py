"""``rcdm evaluate``: rank/MRR faithfulness, invariance, linear probes, FID, and what
attributes the samples keep; one module per command.

Every command prints a table (or ``--json``) and appends its result to a JSON-lines
file (``--results``, default ``rcdm-results.jsonl``) so batch jobs can collect them.
"""

from __future__ import annotations

import typer

from rcdm_cli.cli.evaluate import attributes, fid, invariance, probe, rank, table

app = typer.Typer(help="Put numbers on what the pictures show.", no_args_is_help=True)

app.command("rank")(rank.rank)
app.command("invariance")(invariance.invariance)
app.command("probe")(probe.probe)
app.command("fid")(fid.fid)
app.command("table")(table.table)
app.command("attributes", no_args_is_help=True)(attributes.evaluate_attributes)
