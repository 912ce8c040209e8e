"""``rcdm demo``: the whole pipeline offline on a CPU in a few minutes."""

from __future__ import annotations

from pathlib import Path

import typer

from rcdm_cli.cli.console import log, print_json, settings


def demo(
    out: Path = typer.Option(Path("rcdm-demo"), "--out", "-o", help="Folder for the scenes, the model and the report."),
    steps: int = typer.Option(500, "--steps", help="Training steps of the small model (500: about 2.5 minutes on 2 CPU cores)."),
    released: bool = typer.Option(False, "--released", help="Use the released DINO-head RCDM (downloads it) instead of training."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenes, the training and the sampling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Generate scenes, train a tiny RCDM on them, sample, interpolate, measure; write a report.

    Runs offline on a CPU. With --released, a released checkpoint (and its encoder)
    is downloaded and used instead of training.
    """
    from rcdm_cli.demo.run import DemoSettings, clear_outputs, holds_demo, run_demo
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.errors import UsageError

    if steps <= 0:
        raise UsageError("--steps must be positive")
    if overwrite and holds_demo(out):  # never a folder of the user's that merely has a data/ in it
        clear_outputs(out)
    demo_settings = DemoSettings(out=out, steps=steps, seed=seed)
    if released:
        demo_settings.checkpoint = "released:dino-head"
    result = run_demo(demo_settings, resolve_device(settings.device), event=lambda m: log.info("%s", m))
    if json_out:
        print_json(result)
    rank = result["rank"]
    log.info(
        "mean rank %.2f (chance %.2f), MRR %.3f (chance %.3f)",
        rank["mean_rank"], rank["chance_mean_rank"], rank["mrr"], rank["chance_mrr"],
    )
    typer.echo(f"report: {Path(result['report']).resolve()}", err=True)
