"""How an image becomes an encoder's input.

Two steps, kept apart on purpose:

1. geometry (PIL): resize and centre-crop to a square of ``size`` pixels, giving a
   tensor in [0, 1];
2. normalisation ``(x - mean) / std``, done inside the encoder's forward pass, so
   that attacks and gradients work on ordinary [0, 1] images.

``IMAGENET`` is what most encoders were evaluated with (resize the short side to 256,
centre-crop 224, ImageNet mean/std). ``RCDM`` is what the released RCDM models were
trained with: guided-diffusion's centre crop straight to 224 and a [-1, 1] scaling
(mean = std = 0.5). A checkpoint records which one its representations came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from rcdm_cli.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("short-side", "adm")
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """``resize="short-side"``: scale the short side to ``resize_to`` with
    ``interpolation``, then centre-crop ``size`` (torchvision's Resize + CenterCrop).
    ``resize="adm"``: guided-diffusion's ``center_crop_arr`` (halve with a box filter
    while the image is at least twice the target, bicubic-resize the short side to
    ``size``, centre-crop)."""

    name: str
    size: int = 224
    resize: str = "short-side"
    resize_to: int | None = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise UsageError(f"unknown resize mode {self.resize!r}; expected one of {', '.join(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"unknown interpolation {self.interpolation!r}")
        if self.size <= 0 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UsageError(f"invalid preprocessing {self.name!r}: size, mean and std")
        if self.resize == "short-side" and (self.resize_to or 0) < self.size:
            raise UsageError(f"preprocessing {self.name!r}: resize_to must be at least the crop size")

    def describe(self) -> str:
        if self.resize == "adm":
            geometry = f"centre crop {self.size} (guided-diffusion)"
        else:
            geometry = f"resize {self.resize_to} ({self.interpolation}), centre crop {self.size}"
        norm = "[-1, 1]" if self.mean == (0.5,) * 3 and self.std == (0.5,) * 3 else (
            "ImageNet mean/std" if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD) else f"mean {self.mean}, std {self.std}"
        )
        return f"{geometry}, {norm}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"unknown preprocessing setting(s): {', '.join(sorted(unknown))}")
        data = dict(data)
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)

    # --- geometry ---------------------------------------------------------------------

    def crop(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if self.resize == "adm":
            return _adm_center_crop(image, self.size)
        return _center_crop(_resize_short_side(image, self.resize_to, INTERPOLATIONS[self.interpolation]), self.size)

    def to_tensor(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """A (B, 3, size, size) float tensor in [0, 1] (not yet normalised)."""
        if isinstance(images, Image.Image):
            images = [images]
        arrays = [np.asarray(self.crop(im), dtype=np.float32) / 255.0 for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


def _resize_short_side(image: Image.Image, target: int, resample) -> Image.Image:
    w, h = image.size
    if w <= h:
        new_w, new_h = target, int(target * h / w)
    else:
        new_w, new_h = int(target * w / h), target
    return image.resize((new_w, new_h), resample=resample)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


IMAGENET = Preprocessing("imagenet")
RCDM = Preprocessing("rcdm", size=224, resize="adm", resize_to=None, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def diffusion_target(image: Image.Image, size: int) -> torch.Tensor:
    """The image the diffusion model sees: guided-diffusion's centre crop to ``size``,
    scaled to [-1, 1]; shape (3, size, size)."""
    arr = np.asarray(_adm_center_crop(image.convert("RGB"), size), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
