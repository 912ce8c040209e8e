"""``rcdm train``: train an RCDM on a folder of images with any encoder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.completion import complete_encoder, complete_layer, complete_preset
from rcdm_cli.cli.console import StepProgress, log, print_json, settings
from rcdm_cli.errors import UsageError


class _CLIReporter:
    """A progress bar (step, loss, img/s, ETA) on a terminal; a line per --log-every
    step in batch logs; errors only with --quiet."""

    def __init__(self, bar: StepProgress):
        self.bar = bar

    def event(self, message: str) -> None:
        log.info("%s", message)

    def step(self, step: int, total: int, loss: float, images_per_second: float) -> None:
        if self.bar._bar is not None:  # only the terminal bar updates every step
            self.bar.update(step, f"step {step}/{total} loss {loss:.4f} {images_per_second:.1f} img/s")

    def log(self, record: dict) -> None:
        log.info(
            "step %d: loss %.4f (mse %.4f, vb %.4f), grad norm %.3g, %.1f img/s, %d skipped image(s)",
            record["step"], record["loss"], record["mse"], record["vb"], record["grad_norm"],
            record["img_per_s"], record["skipped_images"],
        )


def train(
    data: Optional[Path] = typer.Argument(None, help="A folder of images (searched recursively)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder where it stopped."),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="Encoder whose representation conditions the model.", autocompletion=complete_encoder),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Encoder layer (default: the encoder's default).", autocompletion=complete_layer),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A local file of the encoder's weights."),
    preprocessing: str = typer.Option("rcdm", "--preprocessing", help="Encoder input scaling: rcdm ([-1, 1], as the released models) or native."),
    preset: str = typer.Option("rcdm-128", "--preset", help="Architecture: rcdm-128, rcdm-64, rcdm-256 or tiny.", autocompletion=complete_preset),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The run folder."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per step per process (global batch = this x processes)."),
    microbatch: int = typer.Option(0, "--microbatch", help="Split each batch into microbatches of this size (gradient accumulation)."),
    lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="AdamW weight decay."),
    ema: List[float] = typer.Option([0.9999], "--ema", help="EMA rate; repeat for several."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Train until this many steps (default 500000; with --resume, extends the run)."),
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
    the same command. SIGTERM or SIGUSR1 save a checkpoint and exit 0.
    """
    from rcdm_cli.checkpoint.rundir import RunDir
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.training.config import TrainConfig
    from rcdm_cli.training.loop import Trainer

    if resume is not None:
        run_dir = RunDir(resume)
        saved = TrainConfig.from_dict(run_dir.read_config()["config"])
        if data is not None and Path(data) != Path(saved.data):
            raise UsageError(f"--resume continues the run on {saved.data}; leave DATA out")
        # only the length of the run may change on resume; everything else is the run's
        saved.steps = steps if steps is not None else saved.steps
        saved.out = str(resume)
        config, resuming = saved, True
    else:
        if data is None or encoder is None or out is None:
            raise UsageError("give DATA, --encoder and --out (or --resume RUN_DIR)")
        config = TrainConfig(
            data=str(data), out=str(out), encoder=encoder, layer=layer, weights=str(weights) if weights else None,
            preprocessing=preprocessing, preset=preset, batch_size=batch_size, microbatch=microbatch, lr=lr,
            weight_decay=weight_decay, ema=list(ema), steps=500_000 if steps is None else steps, save_every=save_every, log_every=log_every,
            sample_every=sample_every, seed=seed, workers=workers, precision=precision,
            schedule_sampler=schedule_sampler, random_crop=random_crop, random_flip=random_flip,
            cache_features=cache_features, keep=keep, activation_checkpointing=activation_checkpointing,
            compile=compile_, channels_last=channels_last,
        )
        resuming = False
    trainer = Trainer(config, resolve_device(settings.device), resume=resuming)
    with StepProgress("training", config.steps) as bar:
        trainer.reporter = _CLIReporter(bar)
        summary = trainer.run()
    if trainer.world.is_main:
        log.info(
            "%s at step %d in %.0f s; %d unreadable image(s) skipped; latest checkpoint: %s",
            "stopped" if summary.stopped_by_signal else "finished",
            summary.step, summary.seconds, summary.skipped_images + summary.unreadable_at_scan, summary.last_checkpoint,
        )
        if json_out:
            print_json(summary.__dict__)
