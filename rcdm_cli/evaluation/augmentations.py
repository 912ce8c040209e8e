"""Augmentations for the invariance measurements (of representations, and of the
attributes of samples).

The first group is what SSL methods train with (SimCLR/BYOL/DINO-style pipelines),
so their heads should be invariant to it; the second group they never see. Each
augmentation is a function (image, rng) -> image with fixed, documented strength, so
numbers are comparable between encoders. ``changes`` names the attributes it is meant
to change (a zoom crop the foreground's scale, grayscale the grayscale status), which
``evaluate attributes --augment`` shows first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from rcdm_cli.errors import UsageError


@dataclass(frozen=True)
class Augmentation:
    name: str
    description: str
    trained: bool
    apply: Callable[[Image.Image, np.random.Generator], Image.Image]
    changes: tuple[str, ...] = ()


def _resized_crop(area: float) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    """A random square-ish crop covering ``area`` of the image, resized back."""

    def apply(im: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = im.size
        ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw = min(w, int(round(np.sqrt(area * w * h * ratio))))
        ch = min(h, int(round(np.sqrt(area * w * h / ratio))))
        left = int(rng.integers(0, w - cw + 1))
        top = int(rng.integers(0, h - ch + 1))
        return im.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)

    return apply


def _hue_shift(im: Image.Image, shift: float) -> Image.Image:
    hsv = np.asarray(im.convert("HSV"), dtype=np.int16).copy()
    hsv[..., 0] = (hsv[..., 0] + int(round(shift * 255))) % 256
    return Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")


def _color_jitter(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """SimCLR's strength: brightness, contrast, saturation 0.4 and hue 0.1, in random order."""
    ops = [
        lambda x: ImageEnhance.Brightness(x).enhance(rng.uniform(0.6, 1.4)),
        lambda x: ImageEnhance.Contrast(x).enhance(rng.uniform(0.6, 1.4)),
        lambda x: ImageEnhance.Color(x).enhance(rng.uniform(0.6, 1.4)),
        lambda x: _hue_shift(x, rng.uniform(-0.1, 0.1)),
    ]
    for i in rng.permutation(len(ops)):
        im = ops[i](im)
    return im


def _shift_down(fraction: float) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    def apply(im: Image.Image, rng: np.random.Generator) -> Image.Image:
        dy = int(round(im.height * fraction))
        out = Image.new("RGB", im.size)
        out.paste(im.crop((0, 0, im.width, im.height - dy)), (0, dy))
        return out

    return apply


_ZOOM = ("fg-scale", "scene-size")

AUGMENTATIONS: dict[str, Augmentation] = {
    a.name: a
    for a in (
        Augmentation("crop-0.8", "random resized crop, 80% of the area", True, _resized_crop(0.8), _ZOOM),
        Augmentation("crop-0.5", "random resized crop, 50% of the area", True, _resized_crop(0.5), _ZOOM),
        Augmentation("crop-0.2", "random resized crop, 20% of the area", True, _resized_crop(0.2), _ZOOM),
        Augmentation("hflip", "horizontal flip", True, lambda im, rng: ImageOps.mirror(im), ("fg-x", "scene-x")),
        Augmentation(
            "color-jitter", "brightness/contrast/saturation 0.4, hue 0.1", True, _color_jitter,
            ("hue", "colourfulness", "brightness", "contrast"),
        ),
        Augmentation(
            "grayscale", "grayscale", True, lambda im, rng: ImageOps.grayscale(im).convert("RGB"),
            ("grayscale", "colourfulness", "scene-gray"),
        ),
        Augmentation(
            "blur", "Gaussian blur, sigma 1 to 2 (of 224 px)", True,
            lambda im, rng: im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.0) * max(im.size) / 224)), ("detail",),
        ),
        Augmentation(
            "solarize", "solarisation above 128", True, lambda im, rng: ImageOps.solarize(im, 128),
            ("brightness", "colour-histogram"),
        ),
        Augmentation("vshift", "shift down by 25% (black fill)", False, _shift_down(0.25), ("fg-y", "scene-y")),
        Augmentation(
            "rotate-30", "rotation by 30 degrees (black corners)", False, lambda im, rng: im.rotate(30, Image.BICUBIC),
            ("background-colour",),
        ),
        Augmentation(
            "rotate-90", "rotation by 90 degrees", False, lambda im, rng: im.rotate(90, expand=True), ("fg-x", "fg-y")
        ),
    )
}


def check_augmentations(names: Sequence[str]) -> list[str]:
    """The names, each once, in order; an unknown one is an error that lists them all."""
    for name in names:
        if name not in AUGMENTATIONS:
            raise UsageError(f"unknown augmentation {name!r}; choose from: {', '.join(AUGMENTATIONS)}")
    return list(dict.fromkeys(names))
