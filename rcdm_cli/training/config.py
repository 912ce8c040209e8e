"""Everything a training run is: written to ``config.json`` and read back by --resume.

Also how the command line's options become a run's configuration: a new run's
(with its preset's suggested learning rate and batch), or a resumed run's saved one
with the options that may change applied.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

from rcdm_cli.acceleration import check_precision
from rcdm_cli.checkpoint.flags import parse_official_flags
from rcdm_cli.diffusion.config import DiffusionConfig, UNetConfig, get_preset
from rcdm_cli.diffusion.timestep_samplers import TIMESTEP_SAMPLERS
from rcdm_cli.errors import UsageError

# What --conditioning-only trains: the representation's projection (and the null
# representation), or also the timestep embedding and every block's embedding layer.
CONDITIONING_LAYERS = ("projection", "embeddings")


def preset_training(preset: str | None) -> dict[str, Any]:
    """The training settings a preset suggests (learning rate, batch), used where the
    command line gives none; nothing for --flags."""
    return dict(get_preset(preset).training) if preset else {}


@dataclass
class TrainConfig:
    data: str
    out: str
    encoder: str
    layer: str | None = None
    weights: str | None = None
    preprocessing: str = "rcdm"
    preset: str | None = "rcdm-128"
    flags: str | None = None  # official model and diffusion flags, instead of a preset
    batch_size: int = 8  # per process, as in guided-diffusion; the global batch is this x processes
    microbatch: int = 0  # 0: the whole batch at once
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema: list[float] = field(default_factory=lambda: [0.9999])
    # warm-up of the EMA (ema.py); runs saved before it existed resume without it
    ema_warmup: bool = True
    # warm start: released:NAME, a checkpoint file or a run folder whose UNet this
    # run starts from (the representation projection too when the widths match)
    init: str | None = None
    # train only the conditioning path for this many steps first (with --init)
    conditioning_only: int = 0
    conditioning_layers: str = "projection"  # or "embeddings": also every embedding layer
    # probability that a sample's representation is replaced by the learned null
    # representation, which representation guidance needs
    cond_drop: float = 0.0
    steps: int = 500_000
    save_every: int = 10_000
    log_every: int = 100
    sample_every: int = 10_000
    seed: int = 0
    workers: int = 4
    precision: str = "fp32"
    schedule_sampler: str = "uniform"
    random_crop: bool = False
    random_flip: bool = False
    cache_features: bool = False
    keep: int = 2
    preview_images: int = 4
    preview_samples: int = 4
    preview_steps: str = "ddim25"
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile the UNet; falls back to eager if compilation fails
    channels_last: bool = False  # NHWC memory format: pays on tensor-core GPUs, not on the CPUs measured

    def validate(self) -> None:
        positive = {
            "--batch-size": self.batch_size, "--steps": self.steps, "--save-every": self.save_every,
            "--log-every": self.log_every, "--sample-every": self.sample_every,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise UsageError(f"{flag} must be positive, got {value}")
        if self.microbatch < 0 or (self.microbatch and self.batch_size % self.microbatch):
            raise UsageError(f"--microbatch {self.microbatch} must divide --batch-size {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive finite number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"--weight-decay must be a non-negative finite number, got {self.weight_decay}")
        if not self.ema or any(not 0 < r < 1 for r in self.ema):
            raise UsageError(f"--ema rates must lie in (0, 1), got {self.ema}")
        if len(set(self.ema)) != len(self.ema):
            raise UsageError("--ema rates must be distinct")
        check_precision(self.precision)
        if self.schedule_sampler not in TIMESTEP_SAMPLERS:
            raise UsageError(f"--schedule-sampler must be one of {', '.join(TIMESTEP_SAMPLERS)}")
        if self.preprocessing not in ("rcdm", "native"):
            raise UsageError(f"--preprocessing must be rcdm or native, got {self.preprocessing!r}")
        if self.cache_features and self.random_crop:
            raise UsageError("--cache-features needs a deterministic encoder view: drop --random-crop")
        if self.workers < 0 or self.keep < 1:
            raise UsageError("--workers must be >= 0 and --keep >= 1")
        if self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed}")
        if not (math.isfinite(self.cond_drop) and 0 <= self.cond_drop < 1):
            raise UsageError(f"--cond-drop must lie in [0, 1), got {self.cond_drop}")
        if self.conditioning_only < 0:
            raise UsageError(f"--conditioning-only must be >= 0 steps, got {self.conditioning_only}")
        if self.conditioning_only and not self.init:
            raise UsageError("--conditioning-only fits the conditioning of a trained model: give it with --init")
        if self.conditioning_layers not in CONDITIONING_LAYERS:
            raise UsageError(
                f"--conditioning-layers must be one of {', '.join(CONDITIONING_LAYERS)}, got {self.conditioning_layers!r}"
            )
        if self.flags and self.preset:
            raise UsageError("give --preset or --flags, not both")
        if not self.flags and not self.preset:
            raise UsageError("give --preset or --flags")
        self.architecture(None)  # bad flags or an unknown preset fail here

    def architecture(self, rep_dim: int | None) -> tuple[UNetConfig, DiffusionConfig]:
        """The UNet (conditioned on ``rep_dim``-d representations) and the diffusion: a
        preset's, or what guided-diffusion flags describe, so that a configuration
        from the original scripts (``$MODEL_FLAGS $DIFFUSION_FLAGS``) trains as it is.
        The representation's width comes from the encoder, not from ``--ssl_dim``."""
        if self.flags:
            parsed = parse_official_flags(self.flags)
            if parsed.unet.rep_dim is None and "feat_cond" in self.flags:
                raise UsageError("--flags describe an unconditional model (--feat_cond False); RCDM conditions on a representation")
            unet, diffusion = parsed.unet, parsed.diffusion
        else:
            preset = get_preset(self.preset)
            unet, diffusion = preset.unet, preset.diffusion
        if diffusion.timestep_respacing:
            raise UsageError("--timestep_respacing is a sampling setting; training uses every diffusion step")
        unet = dataclasses.replace(unet.with_rep_dim(rep_dim), null_representation=self.cond_drop > 0 and rep_dim is not None)
        return unet, diffusion

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("ema_warmup", False)  # saved before warm-up existed: resumes as it ran
        return cls(**values)


# --- from the command line -----------------------------------------------------------

# Options that decide what the run computes: --resume refuses a value that differs
# from the run's. Every other option (the length of the run, how often it saves, logs
# and previews, data loading, memory and speed settings) may change on resume.
RESULT_OPTIONS = {
    "encoder": "--encoder", "layer": "--layer", "weights": "--weights", "preprocessing": "--preprocessing",
    "preset": "--preset", "flags": "--flags", "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
    "ema": "--ema", "seed": "--seed", "precision": "--precision", "schedule_sampler": "--schedule-sampler",
    "random_crop": "--random-crop", "random_flip": "--random-flip", "init": "--init", "cond_drop": "--cond-drop",
    "conditioning_only": "--conditioning-only", "conditioning_layers": "--conditioning-layers",
}
OVERRIDABLE = (
    "steps", "save_every", "log_every", "sample_every", "workers", "keep", "microbatch",
    "activation_checkpointing", "compile", "channels_last", "cache_features",
)


def config_from_options(
    options: dict[str, Any],
    given: Collection[str],
    *,
    data: str | Path | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> TrainConfig:
    """The run that ``rcdm train`` asks for. ``options`` holds a value (the default
    where not given) for every field of :class:`TrainConfig` but ``data`` and ``out``;
    ``batch_size``, ``lr`` and ``preset`` may be None, for the preset's suggestion.
    ``given`` names the options the user gave, which --resume compares with the
    run's."""
    weights = str(options["weights"]) if options.get("weights") else None
    values = {**options, "weights": weights, "ema": list(options["ema"])}
    values["preset"] = values["preset"] if values["preset"] or values["flags"] else "rcdm-128"
    suggested = preset_training(values["preset"])
    if values["batch_size"] is None:
        values["batch_size"] = suggested.get("batch_size", 8)
    if values["lr"] is None:
        values["lr"] = suggested.get("lr", 1e-4)
    if resume is not None:
        if overwrite:
            raise UsageError("--overwrite starts a new run; it cannot be combined with --resume")
        return resumed_config(resume, values, given, data=data, out=out)
    if data is None or values["encoder"] is None or out is None:
        raise UsageError("give DATA, --encoder and --out (or --resume RUN_DIR)")
    return TrainConfig(data=str(data), out=str(out), **values)


def resumed_config(
    run: str | Path,
    values: dict[str, Any],
    given: Collection[str],
    *,
    data: str | Path | None = None,
    out: str | Path | None = None,
) -> TrainConfig:
    """The saved run's configuration, with the options that may change applied (those
    in ``given``, from ``values``). Any given option that would change what the run
    computes and differs from the run's is refused, all of them named in one line."""
    from rcdm_cli.checkpoint.rundir import RunDir

    saved = TrainConfig.from_dict(RunDir(run).read_config()["config"])
    if data is not None and not _same_path(data, saved.data):
        raise UsageError(f"--resume continues the run on {saved.data}; leave DATA out")
    if out is not None and not _same_path(out, run):
        raise UsageError("--resume RUN_DIR continues the run in RUN_DIR; leave --out out")
    conflicts = []
    for name, flag in RESULT_OPTIONS.items():
        if name not in given:
            continue
        yours, theirs = values[name], getattr(saved, name)
        if name == "weights":
            same = _same_path(yours, theirs)
        elif name == "layer" and theirs is None:
            from rcdm_cli.encoders import resolve_encoder

            same = yours == resolve_encoder(saved.encoder).layer
        else:
            same = yours == theirs
        if not same:
            conflicts.append(f"{flag} {_show(yours)} (the run's: {_show(theirs)})")
    if conflicts:
        raise UsageError(
            f"--resume continues {run} with its own settings, and these options differ: {', '.join(conflicts)}; "
            "drop them, or start a new run in another --out"
        )
    for name in OVERRIDABLE:
        if name in given:
            setattr(saved, name, values[name])
    saved.out = str(run)
    return saved


def _same_path(a: str | Path | None, b: str | Path | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
