"""``rcdm train``: train an RCDM on a folder of images with any encoder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.completion import complete_checkpoint, complete_encoder, complete_layer, complete_preset
from rcdm_cli.cli.console import StepProgress, log, print_json, settings, setup_logging
from rcdm_cli.folderlock import claim

# The command's parameters that are not fields of the run's configuration.
NOT_CONFIG = {"data", "out", "resume", "overwrite", "json_out"}


def _field(parameter: str) -> str:
    """The configuration field of a parameter (``compile_`` avoids the builtin)."""
    return parameter.rstrip("_")


class _CLIReporter:
    """A progress bar (step, loss, img/s, ETA) on a terminal; a line per --log-every
    step in batch logs; errors only with --quiet."""

    def __init__(self, bar: StepProgress, interval: float = 15.0):
        self.bar = bar
        self.interval = interval
        self._last_progress = 0.0

    def event(self, message: str) -> None:
        log.info("%s", message)

    def warning(self, message: str) -> None:
        log.warning("%s", message)

    def step(self, step: int, total: int, loss: float, images_per_second: float) -> None:
        if self.bar._bar is not None:  # only the terminal bar updates every step
            self.bar.update(step, f"step {step}/{total} mean loss {loss:.4f} since the last log, {images_per_second:.1f} img/s")

    def log(self, record: dict) -> None:
        failed = record["unreadable_in_training"]
        log.info(
            "step %d: mean over the last %d step(s): loss %.4f (mse %.4f, vb %.4f), grad norm %.3g, %.1f img/s%s",
            record["step"], record["window_steps"], record["loss"], record["mse"], record["vb"], record["grad_norm"],
            record["img_per_s"],
            f", {failed} image(s) failed to decode and were replaced" if failed else "",
        )

    def progress(self, task: str, done: int, total: int) -> None:
        """Work outside the steps (the feature cache, the previews): on a terminal in
        the bar's description, in batch logs a line at most every ``interval`` seconds
        and one at the end."""
        if self.bar._bar is not None:
            self.bar.update(self.bar.done, f"{task}: {done}/{total}")
            return
        now = time.monotonic()
        if now - self._last_progress >= self.interval or done >= total:
            self._last_progress = now
            log.info("%s: %d/%d", task, done, total)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the option was on the command line (or in its environment variable),
    rather than left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def train(
    ctx: typer.Context,
    data: Optional[Path] = typer.Argument(None, help="A folder of images (searched recursively, following linked folders)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder where it stopped."),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="Encoder whose representation conditions the model.", autocompletion=complete_encoder),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Encoder layer (default: the encoder's default).", autocompletion=complete_layer),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A local file of the encoder's weights."),
    preprocessing: str = typer.Option("rcdm", "--preprocessing", help="Encoder input scaling: rcdm ([-1, 1], as the released models) or native."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Architecture and diffusion: rcdm-128 (default), rcdm-64, rcdm-256, tiny, or cpu (learns in minutes on a CPU).", autocompletion=complete_preset),
    flags: Optional[str] = typer.Option(None, "--flags", help="Instead of --preset: guided-diffusion model and diffusion flags (\"--image_size 64 --num_channels 128 ... --predict_xstart True\")."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The run folder: new, empty, or a run stopped before its first save."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in a non-empty --out, replacing a run's checkpoints, metrics and previews there."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per step per process (global batch = this x processes; default 8, or the preset's).", show_default=False),
    microbatch: int = typer.Option(0, "--microbatch", help="Split each batch into microbatches of this size (gradient accumulation)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate (default 1e-4, or the preset's).", show_default=False),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="AdamW weight decay."),
    ema: List[float] = typer.Option([0.9999], "--ema", help="EMA rate, with warm-up (min(rate, (1+n)/(10+n)) at step n); repeat for several."),
    init: Optional[str] = typer.Option(None, "--init", help="Warm start from released:NAME, a checkpoint file or a run folder of the same architecture.", autocompletion=complete_checkpoint),
    conditioning_only: int = typer.Option(0, "--conditioning-only", help="With --init: train only the conditioning path for the first N steps."),
    conditioning_layers: str = typer.Option("projection", "--conditioning-layers", help="What --conditioning-only trains: projection (the representation's) or embeddings (also every embedding layer)."),
    cond_drop: float = typer.Option(0.0, "--cond-drop", help="Probability of replacing a representation by a learned null one, for --guidance at sampling."),
    steps: int = typer.Option(500_000, "--steps", help="Train until this many steps (with --resume, extends the run)."),
    save_every: int = typer.Option(10_000, "--save-every", help="Checkpoint every N steps."),
    log_every: int = typer.Option(100, "--log-every", help="Log metrics every N steps."),
    sample_every: int = typer.Option(10_000, "--sample-every", help="Write a preview grid every N steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random stream of the run."),
    workers: int = typer.Option(4, "--workers", help="Data-loading processes."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 (autocast) or fp16 (autocast and loss scaling, CUDA only)."),
    schedule_sampler: str = typer.Option("uniform", "--schedule-sampler", help="uniform or loss-second-moment."),
    random_crop: bool = typer.Option(False, "--random-crop", help="Random square crops (80-100% of the short side)."),
    random_flip: bool = typer.Option(False, "--random-flip", help="Random horizontal flips."),
    cache_features: bool = typer.Option(False, "--cache-features", help="Encode each image once and reuse the representation."),
    keep: int = typer.Option(2, "--keep", help="Checkpoints to keep."),
    activation_checkpointing: bool = typer.Option(False, "--activation-checkpointing", help="Recompute activations in backward to save memory."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the network (minutes of compilation first; falls back to eager with a warning if it fails)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Channels-last (NHWC) memory format: faster convolutions on tensor-core GPUs."),
    json_out: bool = typer.Option(False, "--json", help="Print a summary as JSON on stdout at the end."),
) -> None:
    """Train an RCDM conditioned on an encoder's representation of your images.

    Runs as one process, or under torchrun (one process per GPU, or gloo on CPUs) with
    the same command. SIGTERM or SIGUSR1 save a checkpoint and exit 0. With --resume,
    options that would change what the run computes are refused.
    """
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.training.config import config_from_options
    from rcdm_cli.training.distributed import from_environment
    from rcdm_cli.training.loop import Trainer

    main = from_environment().is_main
    if not main:  # under torchrun only rank 0 talks; errors still show
        settings.quiet = True
        setup_logging(settings.debug, True)
    options = {_field(name): value for name, value in ctx.params.items() if name not in NOT_CONFIG}
    given = {_field(name) for name in ctx.params if _given(ctx, name)}
    config = config_from_options(options, given, data=data, out=out, resume=resume, overwrite=overwrite)
    if main:  # one run per folder; torchrun's other ranks write through rank 0's claim
        claim(config.out, "train")
    trainer = Trainer(config, resolve_device(settings.device), resume=resume is not None, overwrite=overwrite)
    with StepProgress("training", trainer.config.steps) as bar:
        trainer.reporter = _CLIReporter(bar)
        summary = trainer.run()
    if main:
        _report(summary)
        if json_out:
            print_json(summary.__dict__)


def _report(summary) -> None:
    unreadable = (
        f"; unreadable images: {summary.unreadable_at_scan} left out at the scan, "
        f"{summary.unreadable_in_training} replaced in training"
    )
    if summary.stopped_before_training:
        log.info(
            "stopped before training started, at step %d; nothing new to save; latest checkpoint: %s",
            summary.step, summary.last_checkpoint,
        )
        return
    loss = (
        f", mean loss {summary.final_loss:.4f} over the last {summary.final_loss_steps} step(s)"
        if summary.final_loss is not None else ""
    )
    log.info("%s", _written(summary.run_dir))
    log.info(
        "%s at step %d in %.0f s%s%s; latest checkpoint: %s",
        "stopped" if summary.stopped_by_signal else "finished", summary.step, summary.seconds, loss, unreadable,
        summary.last_checkpoint,
    )


def _written(run_dir: str) -> str:
    """What the run folder holds now, so that the user knows where to look; just
    before the last line, which says how the run ended and names its latest checkpoint."""
    from rcdm_cli.checkpoint.rundir import RunDir

    run = RunDir(run_dir)
    held = [name for name in ("config.json", "metrics.jsonl") if (run.root / name).is_file()]
    checkpoints = run.complete_checkpoints()
    if checkpoints:
        held.append(f"{len(checkpoints)} checkpoint(s) in checkpoints/ (latest {checkpoints[-1][1].name})")
    previews = sorted(run.previews.glob("step-*.png")) if run.previews.is_dir() else []
    if previews:
        held.append(f"{len(previews)} preview grid(s) in previews/ (latest {previews[-1].name})")
    return f"written in {run.root.resolve()}: {', '.join(held)}"
