"""Architecture and diffusion settings, and named presets.

Field names follow guided-diffusion's flags (``num_channels`` is ``model_channels``
here, as in its UNet), so that a configuration reads the same as the command line that
trained a released checkpoint; :mod:`rcdm_cli.checkpoint.flags` reads and writes that
command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

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
