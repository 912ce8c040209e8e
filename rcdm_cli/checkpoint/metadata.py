"""What a checkpoint says about itself.

A model is only usable with the representation it was trained on, so the metadata
records the encoder, the layer, the representation's width and the exact input
preprocessing next to the architecture and diffusion settings. Sampling reads these
instead of trusting the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rcdm_cli import __version__
from rcdm_cli.diffusion.config import DiffusionConfig, UNetConfig
from rcdm_cli.errors import RcdmError
from rcdm_cli.preprocessing import RCDM

FORMAT_NAME = "rcdm"
FORMAT_VERSION = 1

# The scaling the released models' representations were computed with: the image
# centre-cropped to 224x224 (guided-diffusion's crop), then mapped to [-1, 1].
RCDM_PREPROCESSING: dict[str, Any] = RCDM.to_dict()


@dataclass(frozen=True)
class EncoderInfo:
    """The representation a model is conditioned on."""

    name: str
    layer: str
    rep_dim: int
    weights: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(RCDM_PREPROCESSING))
    # set when the encoder's weights came from a local file (--weights) rather than
    # from its published source: sampling then needs that same file
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderInfo":
        return cls(**data)


@dataclass(frozen=True)
class CheckpointMeta:
    unet: UNetConfig
    diffusion: DiffusionConfig
    encoder: EncoderInfo | None = None
    step: int | None = None
    source: dict[str, Any] = field(default_factory=dict)
    weight_sets: tuple[str, ...] = ("model",)
    default_weights: str = "model"
    created_by: str = f"rcdm {__version__}"

    def __post_init__(self) -> None:
        if self.unet.learn_sigma != self.diffusion.learn_sigma:
            raise RcdmError("inconsistent checkpoint: learn_sigma differs between UNet and diffusion")
        if self.encoder is not None and self.encoder.rep_dim != self.unet.rep_dim:
            raise RcdmError(
                f"inconsistent checkpoint: encoder gives {self.encoder.rep_dim}-d representations "
                f"but the UNet takes {self.unet.rep_dim}"
            )
        if self.default_weights not in self.weight_sets:
            raise RcdmError(f"inconsistent checkpoint: default weights {self.default_weights!r} not stored")

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    @property
    def rep_dim(self) -> int | None:
        return self.unet.rep_dim

    def describe(self) -> str:
        enc = f"{self.encoder.name}/{self.encoder.layer}" if self.encoder else "explicit representations"
        return f"{self.image_size}x{self.image_size} RCDM on {enc} ({self.rep_dim}-d)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "unet": self.unet.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "encoder": self.encoder.to_dict() if self.encoder else None,
            "step": self.step,
            "source": self.source,
            "weight_sets": list(self.weight_sets),
            "default_weights": self.default_weights,
            "created_by": self.created_by,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckpointMeta":
        if data.get("format") != FORMAT_NAME:
            raise RcdmError("not an rcdm checkpoint (no rcdm metadata)")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise RcdmError(
                f"checkpoint format version {version} is newer than this rcdm understands "
                f"({FORMAT_VERSION}); upgrade rcdm"
            )
        try:
            return cls(
                unet=UNetConfig.from_dict(data["unet"]),
                diffusion=DiffusionConfig.from_dict(data["diffusion"]),
                encoder=EncoderInfo.from_dict(data["encoder"]) if data.get("encoder") else None,
                step=data.get("step"),
                source=dict(data.get("source") or {}),
                weight_sets=tuple(data.get("weight_sets") or ("model",)),
                default_weights=data.get("default_weights", "model"),
                created_by=data.get("created_by", "unknown"),
            )
        except (KeyError, TypeError) as exc:
            raise RcdmError(f"checkpoint metadata is incomplete or malformed ({exc})") from None
