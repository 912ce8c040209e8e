"""``rcdm demo``: the paper in miniature, offline on a CPU in a few minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rcdm_cli.cli.console import StepProgress, log, print_json, settings


class _Bars:
    """One progress bar at a time, for the task the demo reports (a model's training,
    its feature cache); a bar closes when its task is done or another begins."""

    def __init__(self):
        self.task: str | None = None
        self.bar: StepProgress | None = None

    def __call__(self, task: str, done: int, total: int) -> None:
        if task != self.task:
            self.close()
            self.task, self.bar = task, StepProgress(task, total).__enter__()
        self.bar.update(done)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        self.task, self.bar = None, None


def demo(
    out: Path = typer.Option(Path("rcdm-demo"), "--out", "-o", help="Folder for the scenes, the models and the report."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps of each small model (default 1000; 4000 with --full)."),
    full: bool = typer.Option(False, "--full", help="Tighter numbers in longer time: also the supervised encoder, more steps, scenes and augmentations."),
    released: bool = typer.Option(False, "--released", help="Use the released DINO-head RCDM (downloads it) instead of training."),
    seed: int = typer.Option(0, "--seed", help="Seed of the scenes, the training and the sampling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """The paper in miniature: generate scenes, train small RCDMs on the backbone and
    the projector head of a self-supervised encoder, and measure what each keeps;
    write a report with the paper's findings beside the numbers.

    Runs offline on a CPU (about 5 minutes on 2 cores). With --released, a released
    checkpoint (and its encoder) is downloaded and measured instead of training.
    """
    from rcdm_cli.demo.run import DemoSettings, clear_outputs, holds_demo, run_demo
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.errors import Terminated, UsageError
    from rcdm_cli.folderlock import claim

    if steps is not None and steps <= 0:
        raise UsageError("--steps must be positive")
    if seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed}")
    claim(out, "demo")  # one demo per folder at a time, claimed before anything there is touched
    if overwrite and holds_demo(out):  # never a folder of the user's that merely has a data/ in it
        clear_outputs(out)
    overrides = {"seed": seed, **({"steps": steps} if steps is not None else {})}
    demo_settings = DemoSettings.full(out, **overrides) if full else DemoSettings(out=out, **overrides)
    if released:
        demo_settings.checkpoint = "released:dino-head"
    bars = _Bars()
    try:
        result = run_demo(
            demo_settings, resolve_device(settings.device), event=lambda m: log.info("%s", m), progress=bars
        )
    except Terminated:  # SIGTERM (see cli/app.py): what it finished stays, and no report claims more
        raise Terminated("stopped by SIGTERM; no report written (the next run replaces this unfinished demo)") from None
    finally:
        bars.close()
    if json_out:
        print_json(result)
    for record in result["representations"]:
        rank = record["rank"]
        log.info(
            "%s: mean rank %.2f (chance %.2f), MRR %.3f (chance %.3f)",
            record["label"], rank["mean_rank"], rank["chance_mean_rank"], rank["mrr"], rank["chance_mrr"],
        )
    for finding in result["findings"]:
        log.info("%s %s", finding["claim"], finding["verdict"])
    typer.echo(_written(out, result), err=True)


def _written(out: Path, result: dict) -> str:
    """The last line: the report to open, and what else the demo wrote where."""
    keys = ("samples", "interpolation", "augmented", "attributes")
    pictures = [Path(result[key]).name for key in keys if key in result]
    models = ", the models in runs/" if (out / "runs").is_dir() else ""
    return (
        f"report: {Path(result['report']).resolve()}; also in {out.resolve()}: {', '.join(pictures)}, "
        f"{Path(result['summary']).name} (the numbers), the scenes in data/{models}"
    )
