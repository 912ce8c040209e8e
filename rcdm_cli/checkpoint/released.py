"""The nine RCDM checkpoints released with the paper, known by name.

All were trained at 128x128 with the same architecture (the ``rcdm-128`` preset) on
ImageNet, conditioned on representations of 224x224 images scaled to [-1, 1]. Their
weights are under CC-BY-NC 4.0 (non-commercial use only).
"""

from __future__ import annotations

from dataclasses import dataclass

from rcdm_cli.checkpoint.metadata import RCDM_PREPROCESSING, CheckpointMeta, EncoderInfo
from rcdm_cli.diffusion.config import PRESETS
from rcdm_cli.errors import UsageError

BASE_URL = "https://dl.fbaipublicfiles.com/rcdm"
LICENSE = "CC-BY-NC 4.0 (https://dl.fbaipublicfiles.com/rcdm/LICENSE)"
# The released models' flags, as given in the RCDM README.
RELEASED_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 128 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 False --use_scale_shift_norm True"
)


@dataclass(frozen=True)
class ReleasedCheckpoint:
    name: str
    encoder: str
    layer: str
    rep_dim: int
    encoder_weights: str
    filename: str
    description: str

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.filename}"

    def meta(self) -> CheckpointMeta:
        preset = PRESETS["rcdm-128"]
        return CheckpointMeta(
            unet=preset.unet.with_rep_dim(self.rep_dim),
            diffusion=preset.diffusion,
            encoder=EncoderInfo(
                name=self.encoder,
                layer=self.layer,
                rep_dim=self.rep_dim,
                weights=self.encoder_weights,
                preprocessing=dict(RCDM_PREPROCESSING),
            ),
            source={"kind": "released", "name": self.name, "url": self.url, "license": LICENSE},
            weight_sets=("ema",),
            default_weights="ema",
        )


def _entry(encoder: str, layer: str, rep_dim: int, weights: str, file_part: str, what: str) -> ReleasedCheckpoint:
    name = encoder if encoder == "supervised" else f"{encoder}-{layer}"
    return ReleasedCheckpoint(name, encoder, layer, rep_dim, weights, f"rcdm_ema_{file_part}.pt", what)


RELEASED: dict[str, ReleasedCheckpoint] = {
    c.name: c
    for c in (
        _entry("simclr", "backbone", 2048, "vissl", "simclr_trunk", "SimCLR ResNet-50 trunk (2048-d)"),
        _entry("simclr", "head", 128, "vissl", "simclr_head", "SimCLR projector output (128-d)"),
        _entry("barlow", "backbone", 2048, "vissl", "barlow_trunk", "Barlow Twins ResNet-50 trunk (2048-d)"),
        _entry("barlow", "head", 8192, "vissl", "barlow_head", "Barlow Twins projector output (8192-d)"),
        _entry("vicreg", "backbone", 2048, "fullckpt", "vicreg_trunk", "VICReg ResNet-50 trunk (2048-d)"),
        _entry("vicreg", "head", 8192, "fullckpt", "vicreg_head", "VICReg expander output (8192-d)"),
        _entry("dino", "backbone", 2048, "resnet50", "dino_trunk", "DINO ResNet-50 trunk (2048-d)"),
        _entry("dino", "head", 256, "resnet50", "dino_head", "DINO ResNet-50 head bottleneck (256-d)"),
        _entry("supervised", "backbone", 2048, "v1", "supervised", "supervised torchvision ResNet-50, pooled features (2048-d)"),
    )
}

# The paper and the original scripts call the backbone the "trunk".
_ALIASES = {f"{c.encoder}-trunk": c.name for c in RELEASED.values() if c.layer == "backbone"}
_ALIASES["supervised-backbone"] = "supervised"
_ALIASES["supervised-trunk"] = "supervised"


def get_released(name: str) -> ReleasedCheckpoint:
    key = _ALIASES.get(name, name)
    try:
        return RELEASED[key]
    except KeyError:
        raise UsageError(
            f"unknown released checkpoint {name!r}; choose one of: {', '.join(RELEASED)}"
        ) from None


def find_released(encoder: str, layer: str) -> ReleasedCheckpoint | None:
    """The released checkpoint for an encoder and layer, if the paper released one."""
    for c in RELEASED.values():
        if c.encoder == encoder and c.layer == layer:
            return c
    return None
