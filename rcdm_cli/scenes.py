"""Procedural scenes whose factors are known: one shape (circle, square or triangle) of
some size, colour and position on a plain background, a few of them in grayscale.

They need no download and no licence, and because every factor is recorded, what a
representation keeps (and what RCDM reproduces from it) can be read off directly.

Some scenes are grayscale (``GRAY_SHARE`` of them) for the same reason ImageNet has
grayscale photographs: a generator trained only on colour images cannot draw a
grayscale one, so whether a representation keeps grayscale status could not show in
its samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
    "yellow": (235, 210, 40), "magenta": (200, 50, 200), "white": (240, 240, 240),
}
BACKGROUNDS = {"black": (20, 20, 20), "grey": (120, 120, 120), "sky": (140, 190, 235), "sand": (220, 200, 150)}
SIZE_RANGE = (0.3, 0.6)  # the shape's extent, as a fraction of the image side
POSITION_RANGE = (0.3, 0.7)  # its centre
GRAY_SHARE = 0.15


@dataclass(frozen=True)
class Factors:
    shape: str
    colour: str
    background: str
    size: float  # extent of the shape (diameter, side, or base and height) as a fraction of the image side
    x: float  # centre of the shape's bounding square, as fractions of the side
    y: float
    gray: bool = False  # rendered in grayscale


def sample_factors(rng: np.random.Generator) -> Factors:
    return Factors(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        size=float(rng.uniform(*SIZE_RANGE)),
        x=float(rng.uniform(*POSITION_RANGE)),
        y=float(rng.uniform(*POSITION_RANGE)),
        gray=bool(rng.random() < GRAY_SHARE),
    )


def luma(rgb: tuple[int, int, int]) -> float:
    """What a colour becomes in a grayscale scene (ITU-R 601 weights, as PIL's "L")."""
    r, g, b = rgb
    return (299 * r + 587 * g + 114 * b) / 1000


def render(f: Factors, size: int = 64, rng: np.random.Generator | None = None) -> Image.Image:
    """The scene, drawn 4x larger and downsampled (anti-aliased), with faint noise
    (the same in every channel of a grayscale scene)."""
    big = size * 4
    im = Image.new("RGB", (big, big), BACKGROUNDS[f.background])
    draw = ImageDraw.Draw(im)
    r = f.size * big / 2
    cx, cy = f.x * big, f.y * big
    colour = COLOURS[f.colour]
    if f.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif f.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(1.0)).resize((size, size), Image.LANCZOS)
    if f.gray:
        im = im.convert("L").convert("RGB")
    if rng is not None:
        shape = (size, size, 1) if f.gray else (size, size, 3)
        arr = np.asarray(im, dtype=np.int16) + rng.integers(-6, 7, shape)
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return im


def make_scenes(count: int, seed: int = 0, size: int = 64) -> list[tuple[Image.Image, dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        f = sample_factors(rng)
        out.append((render(f, size, rng), asdict(f)))
    return out
