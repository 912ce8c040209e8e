"""Architecture and diffusion settings, named presets, and the official flag syntax.

Field names follow guided-diffusion's flags (``num_channels`` is ``model_channels``
here, as in its UNet), so that a configuration reads the same as the command line that
trained a released checkpoint, and any such command line can be turned back into a
configuration with :func:`parse_official_flags`.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from rcdm_cli.errors import UsageError

# guided-diffusion's channel multipliers when `--channel_mult ""` is left empty; for
# any other size it refuses the flags, and so does the parser here.
DEFAULT_CHANNEL_MULT = {
    64: (1, 2, 3, 4),
    128: (1, 1, 2, 3, 4),
    256: (1, 1, 2, 2, 4, 4),
    512: (0.5, 1, 1, 2, 2, 4, 4),
}


@dataclass(frozen=True)
class UNetConfig:
    """The ADM UNet, conditioned on a representation vector of ``rep_dim`` values.

    ``rep_dim=None`` builds an unconditional UNet (no ``ssl_emb`` layer).
    ``null_representation`` adds a learned vector that stands for "no representation"
    (trained with ``rcdm train --cond-drop``, used by representation guidance); the
    released models have none.
    ``attention_resolutions`` are feature-map sizes (32, 16, 8), as in the flags.
    """

    image_size: int
    model_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[float, ...]
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    learn_sigma: bool = True
    in_channels: int = 3
    rep_dim: int | None = None
    null_representation: bool = False

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.model_channels <= 0 or self.num_res_blocks <= 0:
            raise UsageError("image size, channels and residual blocks must be positive")
        if not self.channel_mult:
            raise UsageError("channel_mult must name at least one level")
        downsampling = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % downsampling:
            raise UsageError(
                f"image size {self.image_size} is not divisible by {downsampling}, "
                f"the total downsampling of {len(self.channel_mult)} levels"
            )
        for mult in self.channel_mult:
            width = int(mult * self.model_channels)
            if width % 32:
                raise UsageError(
                    f"channel width {width} (= {mult} x {self.model_channels}) is not a multiple "
                    "of 32, which GroupNorm(32) requires"
                )
            if self.num_head_channels not in (-1, 0) and width % self.num_head_channels:
                raise UsageError(
                    f"channel width {width} is not divisible by num_head_channels "
                    f"{self.num_head_channels}"
                )
        if self.rep_dim is not None and self.rep_dim <= 0:
            raise UsageError(f"representation dim must be positive, got {self.rep_dim}")
        if self.null_representation and self.rep_dim is None:
            raise UsageError("a null representation needs a representation-conditional UNet")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"dropout must lie in [0, 1), got {self.dropout}")
        self._check_heads()

    def _check_heads(self) -> None:
        """Every attention block must split its channels evenly into heads: the
        blocks at the attention resolutions, going down and up, and the middle one."""
        if self.num_head_channels == 0 or self.num_head_channels < -1:
            raise UsageError(f"num_head_channels must be -1 (use num_heads) or positive, got {self.num_head_channels}")
        if self.num_head_channels > 0:
            return  # every width was checked against it above
        if self.num_heads <= 0:
            raise UsageError(f"num_heads must be positive, got {self.num_heads}")
        heads_up = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample
        if heads_up <= 0:
            raise UsageError(f"num_heads_upsample must be -1 (as num_heads) or positive, got {self.num_heads_upsample}")
        rates = self.attention_downsample_rates
        widths = [int(m * self.model_channels) for m in self.channel_mult]
        for level, width in enumerate(widths):
            if 2**level not in rates:
                continue
            for heads, flag in ((self.num_heads, "num_heads"), (heads_up, "num_heads_upsample")):
                if width % heads:
                    raise UsageError(f"{flag} {heads} does not divide the {width} channels of the attention at level {level}")
        if widths[-1] % self.num_heads:
            raise UsageError(f"num_heads {self.num_heads} does not divide the {widths[-1]} channels of the middle attention")

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def attention_downsample_rates(self) -> frozenset[int]:
        """The downsampling factors at which attention runs (the UNet's own bookkeeping)."""
        return frozenset(self.image_size // r for r in self.attention_resolutions)

    def with_rep_dim(self, rep_dim: int | None) -> "UNetConfig":
        return dataclasses.replace(self, rep_dim=rep_dim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown UNet setting(s): {', '.join(unknown)}")
        data = dict(data)
        for key in ("attention_resolutions", "channel_mult"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class DiffusionConfig:
    """The Gaussian diffusion process: schedule, parameterisation and loss."""

    steps: int = 1000
    noise_schedule: str = "linear"
    learn_sigma: bool = True
    sigma_small: bool = False
    predict_xstart: bool = False
    use_kl: bool = False
    rescale_learned_sigmas: bool = False
    rescale_timesteps: bool = False
    timestep_respacing: str = ""

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise UsageError(f"diffusion steps must be positive, got {self.steps}")
        if self.timestep_respacing:
            from rcdm_cli.diffusion.respace import space_timesteps

            space_timesteps(self.steps, self.timestep_respacing)  # a bad spec fails here
        if self.noise_schedule not in ("linear", "cosine"):
            raise UsageError(
                f"unknown noise schedule {self.noise_schedule!r}: expected 'linear' or 'cosine'"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DiffusionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown diffusion setting(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    unet: UNetConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # training settings that suit the preset, used where the command line gives none
    training: Mapping[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "rcdm-128",
            "the released RCDM models: 128x128, 256 channels, linear schedule (about 420 M parameters)",
            UNetConfig(
                image_size=128,
                model_channels=256,
                num_res_blocks=2,
                attention_resolutions=(32, 16, 8),
                channel_mult=DEFAULT_CHANNEL_MULT[128],
                num_heads=4,
            ),
        ),
        Preset(
            "rcdm-64",
            "ADM's ImageNet 64x64 settings: 192 channels, 3 blocks, cosine schedule, dropout 0.1",
            UNetConfig(
                image_size=64,
                model_channels=192,
                num_res_blocks=3,
                attention_resolutions=(32, 16, 8),
                channel_mult=DEFAULT_CHANNEL_MULT[64],
                num_head_channels=64,
                dropout=0.1,
                use_new_attention_order=True,
            ),
            DiffusionConfig(noise_schedule="cosine"),
        ),
        Preset(
            "rcdm-256",
            "ADM's ImageNet 256x256 settings: 256 channels, 64-channel heads, linear schedule",
            UNetConfig(
                image_size=256,
                model_channels=256,
                num_res_blocks=2,
                attention_resolutions=(32, 16, 8),
                channel_mult=DEFAULT_CHANNEL_MULT[256],
                num_head_channels=64,
            ),
        ),
        Preset(
            "tiny",
            "32x32, 32 channels (about 2 M parameters): tests, the offline demo, CPU experiments",
            UNetConfig(
                image_size=32,
                model_channels=32,
                num_res_blocks=2,
                attention_resolutions=(16, 8),
                channel_mult=(1, 2, 2),
                num_heads=4,
            ),
        ),
        # The offline demo's recipe. At a CPU's budget (a thousand steps) a noise
        # predictor with a learned variance stays at chance, while predicting the
        # image with a fixed variance follows its conditioning after a few hundred
        # steps; one block per level and attention at 8x8 only make a step a third
        # cheaper than `tiny` at the same faithfulness on the demo's scenes.
        Preset(
            "cpu",
            "32x32, 1.0 M parameters, predicts the image, fixed variance: follows its conditioning after a few "
            "hundred steps on a laptop CPU (lr 2e-3, batch 16)",
            UNetConfig(
                image_size=32,
                model_channels=32,
                num_res_blocks=1,
                attention_resolutions=(8,),
                channel_mult=(1, 1, 2),
                num_heads=4,
                learn_sigma=False,
            ),
            DiffusionConfig(learn_sigma=False, predict_xstart=True),
            training={"lr": 2e-3, "batch_size": 16},
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None


# --- the official flag syntax -------------------------------------------------------

_MODEL_FLAGS = {
    "image_size": int,
    "num_channels": int,
    "num_res_blocks": int,
    "num_heads": int,
    "num_heads_upsample": int,
    "num_head_channels": int,
    "attention_resolutions": str,
    "channel_mult": str,
    "dropout": float,
    "class_cond": bool,
    "use_checkpoint": bool,
    "use_scale_shift_norm": bool,
    "resblock_updown": bool,
    "use_fp16": bool,
    "use_new_attention_order": bool,
}
_DIFFUSION_FLAGS = {
    "learn_sigma": bool,
    "diffusion_steps": int,
    "noise_schedule": str,
    "timestep_respacing": str,
    "use_kl": bool,
    "predict_xstart": bool,
    "rescale_timesteps": bool,
    "rescale_learned_sigmas": bool,
    "sigma_small": bool,
}
# RCDM's own flags that say which representation the model was trained on.
_REPRESENTATION_FLAGS = {"type_model": str, "use_head": bool, "feat_cond": bool, "ssl_dim": int}
# Training and sampling flags of the official scripts: accepted so that a whole command
# line can be pasted, but they do not describe the model.
_SCRIPT_FLAGS = {
    "batch_size", "microbatch", "lr", "weight_decay", "lr_anneal_steps", "ema_rate",
    "log_interval", "save_interval", "resume_checkpoint", "fp16_scale_growth",
    "schedule_sampler", "data_dir", "out_dir", "model_path", "num_samples", "num_images",
    "use_ddim", "clip_denoised", "name", "submitit", "local_rank", "dist_url", "G_shared",
    "no_shared", "nodes", "ngpus", "use_volta32", "timeout", "partition",
    "first_image_path", "second_image_path", "image_path", "folder_nn_path",
    "image_target_path", "dist", "comment",
}

# guided-diffusion's defaults, for flags a command line leaves out.
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
    "sigma_small": False,
}

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _parse_bool(flag: str, value: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise UsageError(f"--{flag} expects True or False, got {value!r}")


@dataclass(frozen=True)
class OfficialFlags:
    """What an official command line says: the model, the diffusion, and the encoder."""

    unet: UNetConfig
    diffusion: DiffusionConfig
    type_model: str | None = None
    use_head: bool | None = None
    ignored: tuple[str, ...] = ()


def _tokenize(flags: str | Iterable[str]) -> list[tuple[str, str | None]]:
    try:
        tokens = shlex.split(flags) if isinstance(flags, str) else list(flags)
    except ValueError as exc:  # an unbalanced quote
        raise UsageError(f"cannot split the flags: {exc} in {flags!r}") from None
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise UsageError(f"expected a flag such as --image_size, got {tok!r}")
        name = tok[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            pairs.append((name, value))
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            pairs.append((name, tokens[i + 1]))
            i += 2
        else:
            pairs.append((name, None))  # a bare switch such as --feat_cond
            i += 1
    return pairs


def parse_official_flags(flags: str | Iterable[str], rep_dim: int | None = None) -> OfficialFlags:
    """Turn guided-diffusion/RCDM flags (``--image_size 128 --num_channels 256 ...``)
    into a configuration, applying guided-diffusion's defaults for flags left out.

    ``rep_dim`` sets the conditioning width when the flags do not (``--ssl_dim``);
    the official scripts computed it by running the encoder.
    """
    values = dict(OFFICIAL_DEFAULTS)
    type_model: str | None = None
    use_head: bool | None = None
    feat_cond = True  # RCDM's scripts pass --feat_cond; without it the model ignores representations
    ignored: list[str] = []
    # A repeated flag takes its last value, as with the original scripts' argparse, so
    # that `$MODEL_FLAGS --num_channels 64` overrides.
    for name, raw in _tokenize(flags):
        kind = _MODEL_FLAGS.get(name) or _DIFFUSION_FLAGS.get(name) or _REPRESENTATION_FLAGS.get(name)
        if kind is None:
            if name in _SCRIPT_FLAGS:
                ignored.append(name)
                continue
            raise UsageError(
                f"--{name} is not a guided-diffusion/RCDM model or diffusion flag"
            )
        if raw is None:
            if kind is not bool:
                raise UsageError(f"--{name} needs a value")
            value: Any = True
        elif kind is bool:
            value = _parse_bool(name, raw)
        else:
            try:
                value = kind(raw)
            except ValueError:
                raise UsageError(f"--{name} expects {kind.__name__}, got {raw!r}") from None
        if name == "type_model":
            type_model = value
        elif name == "use_head":
            use_head = value
        elif name == "ssl_dim":
            rep_dim = value
        elif name == "feat_cond":
            feat_cond = value
        else:
            values[name] = value

    if values["class_cond"]:
        raise UsageError("--class_cond True describes a class-conditional ADM model, not an RCDM model")

    size = values["image_size"]
    if values["channel_mult"]:
        try:
            channel_mult = tuple(float(m) if "." in m else int(m) for m in values["channel_mult"].split(","))
        except ValueError:
            raise UsageError(f"--channel_mult expects numbers such as 1,1,2,3,4, got {values['channel_mult']!r}") from None
    elif size in DEFAULT_CHANNEL_MULT:
        channel_mult = DEFAULT_CHANNEL_MULT[size]
    else:
        raise UsageError(
            f"no default --channel_mult for image size {size}; give one, such as --channel_mult 1,2,2"
        )
    try:
        attention = tuple(int(r) for r in values["attention_resolutions"].split(",") if r.strip())
    except ValueError:
        raise UsageError(
            f"--attention_resolutions expects sizes such as 32,16,8, got {values['attention_resolutions']!r}"
        ) from None

    unet = UNetConfig(
        image_size=size,
        model_channels=values["num_channels"],
        num_res_blocks=values["num_res_blocks"],
        attention_resolutions=attention,
        channel_mult=channel_mult,
        num_heads=values["num_heads"],
        num_head_channels=values["num_head_channels"],
        num_heads_upsample=values["num_heads_upsample"],
        dropout=values["dropout"],
        use_scale_shift_norm=values["use_scale_shift_norm"],
        resblock_updown=values["resblock_updown"],
        use_new_attention_order=values["use_new_attention_order"],
        learn_sigma=values["learn_sigma"],
        rep_dim=rep_dim if feat_cond else None,
    )
    diffusion = DiffusionConfig(
        steps=values["diffusion_steps"],
        noise_schedule=values["noise_schedule"],
        learn_sigma=values["learn_sigma"],
        sigma_small=values["sigma_small"],
        predict_xstart=values["predict_xstart"],
        use_kl=values["use_kl"],
        rescale_learned_sigmas=values["rescale_learned_sigmas"],
        rescale_timesteps=values["rescale_timesteps"],
        timestep_respacing=values["timestep_respacing"],
    )
    return OfficialFlags(unet, diffusion, type_model, use_head, tuple(ignored))


def to_official_flags(unet: UNetConfig, diffusion: DiffusionConfig) -> str:
    """The flag string that describes this configuration to the original scripts."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, tuple):  # the scripts read channel_mult with int()
            return ",".join(str(int(x)) if float(x).is_integer() else str(x) for x in v)
        return str(v)

    pairs = [
        ("image_size", unet.image_size),
        ("num_channels", unet.model_channels),
        ("num_res_blocks", unet.num_res_blocks),
        ("channel_mult", unet.channel_mult),
        ("attention_resolutions", unet.attention_resolutions),
        ("num_heads", unet.num_heads),
        ("num_head_channels", unet.num_head_channels),
        ("num_heads_upsample", unet.num_heads_upsample),
        ("dropout", unet.dropout),
        ("use_scale_shift_norm", unet.use_scale_shift_norm),
        ("resblock_updown", unet.resblock_updown),
        ("use_new_attention_order", unet.use_new_attention_order),
        ("learn_sigma", diffusion.learn_sigma),
        ("diffusion_steps", diffusion.steps),
        ("noise_schedule", diffusion.noise_schedule),
        ("predict_xstart", diffusion.predict_xstart),
        ("use_kl", diffusion.use_kl),
        ("rescale_learned_sigmas", diffusion.rescale_learned_sigmas),
        ("rescale_timesteps", diffusion.rescale_timesteps),
    ]
    if diffusion.sigma_small:
        # not a flag of the scripts: their learn_sigma False means the large variance,
        # and sigma_small is set in code; say it rather than drop it
        pairs.append(("sigma_small", True))
    # an empty value (no attention resolutions) is quoted, so that it survives being
    # read back; the original scripts accept no such model (they int() every entry)
    return " ".join(f"--{k} {shlex.quote(fmt(v))}" for k, v in pairs)
