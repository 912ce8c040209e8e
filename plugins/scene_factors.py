"""A parser for the demo's procedural scenes (:mod:`rcdm_cli.scenes`): reads a
scene's factors (shape, colour, background, size, position, grayscale) back from its
pixels, so that samples drawn from a scene's representation can be scored on each
factor by the same rule as the scene itself.

It must work on the scenes as rendered (64 px), as the diffusion model sees them
(downsampled, e.g. to 32 px) and on generated samples (noisy, blurred, colours a bit
off), so it measures with sums over the image (areas and centroids of an antialiased
coverage map), which noise and blur leave unbiased, rather than with edges or bounding
boxes of thresholded masks, which they shift.
"""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np

from rcdm_cli.scenes import BACKGROUNDS, COLOURS, POSITION_RANGE, SHAPES, SIZE_RANGE, luma
from rcdm_cli.plugin import AttributeSpec, hookimpl

COLOUR_NAMES = tuple(COLOURS)
BACKGROUND_NAMES = tuple(BACKGROUNDS)
GRAY_CATEGORIES = ("colour", "grayscale")

# The share of its bounding box each shape fills.
FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
# Skewness of a triangle's vertical profile (density growing linearly from apex to base).
TRIANGLE_SKEW = -2 * math.sqrt(2) / 5

_FG_RGB = np.array(list(COLOURS.values()), dtype=np.float64) / 255
_BG_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float64) / 255
_FG_LUMA = np.array([luma(c) for c in COLOURS.values()]) / 255
_BG_LUMA = np.array([luma(c) for c in BACKGROUNDS.values()]) / 255
_LUMA = np.array([0.299, 0.587, 0.114])

ACHROMATIC = 0.1  # chroma (max - min channel) below which an estimated colour counts as gray
MIN_CONTRAST = 0.05  # RGB distance by which a shape must stand out to be found
FILL_LEVEL = 0.04  # rows or columns darker than this throughout are fill, not scene
TIE = 0.03  # luma cost difference under which the gray and colour readings tie
SHARED_GRAIN = 0.3  # channel correlation of the noise above which a tie is read as gray
CHUNK = 64  # images measured at once


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 mean over axes 1, 2 (edges replicated): averages pixel noise away before
    colours are estimated."""
    pad = [(0, 0), (1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 3)
    p = np.pad(x, pad, mode="edge")
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (B, H, W) by a square of side 2 * radius + 1."""
    out = mask.copy()
    for axis in (1, 2):
        grown = out.copy()
        for shift in range(1, radius + 1):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(lo)] |= out[tuple(hi)]
            grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-image median of (B, N, C) values over the True entries of (B, N) mask;
    NaN where an image has none (no shape: expected, so numpy's warning is muted)."""
    filled = np.where(mask[..., None], values, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(filled, axis=1)


def _fill_margins(x: np.ndarray) -> np.ndarray:
    """(B, 4) rows or columns of black fill at the top, bottom, left and right edge
    (what a shift or a pad adds: every pixel darker than FILL_LEVEL), each grown by one
    pixel for the resampled seam. Not scene: left out of every measurement, so a
    shifted scene is read where its shape now is. An image dark throughout has none."""
    bright = x.max(axis=-1)
    margins = []
    for dark in (bright.mean(axis=2) < FILL_LEVEL, bright.mean(axis=1) < FILL_LEVEL):
        for run in (dark, dark[:, ::-1]):
            margins.append(np.cumprod(run, axis=1).sum(axis=1))
    m = np.stack(margins, axis=1)
    m = np.where(m > 0, m + 1, 0)
    h, w = x.shape[1:3]
    blank = (m[:, 0] + m[:, 1] >= h) | (m[:, 2] + m[:, 3] >= w)
    return np.where(blank[:, None], 0, m)


def _scene_masks(shape: tuple, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W) the scene's pixels (no fill) and the outer ring of that rectangle
    (1/32 of the side): the background's sample. The shape reaches the border in few
    scenes and never covers half of the ring, so the ring's median is the background."""
    _, h, w = shape
    band = max(1, round(min(h, w) / 32))
    rows = np.arange(h)[None, :, None]
    cols = np.arange(w)[None, None, :]
    top, bottom, left, right = (margins[:, i, None, None] for i in range(4))
    valid = (rows >= top) & (rows < h - bottom) & (cols >= left) & (cols < w - right)
    inner = (rows >= top + band) & (rows < h - bottom - band) & (cols >= left + band) & (cols < w - right - band)
    return valid, valid & ~inner


def _shared_grain(x: np.ndarray, smooth: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """(B,) correlation of the pixel noise between channels over ``flat`` pixels: a
    grayscale scene's noise is the same in every channel (1), a colour scene's is
    independent (0). Noise-free images count as shared when their channels are equal."""
    r = (x - smooth) * flat[..., None]
    n = np.maximum(flat.sum(axis=(1, 2)), 1)[:, None]
    r = r.reshape(len(x), -1, 3)
    mean = r.sum(axis=1) / n
    cov = np.einsum("bpi,bpj->bij", r, r) / n[..., None] - mean[:, :, None] * mean[:, None, :]
    var = np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None)
    pairs = [(0, 1), (1, 2), (0, 2)]
    num = sum(cov[:, i, j] for i, j in pairs)
    den = sum(np.sqrt(var[:, i] * var[:, j]) for i, j in pairs)
    equal = np.abs(np.diff(x, axis=-1)).reshape(len(x), -1).mean(axis=1) < 1e-4
    return np.where(den > 1e-10, num / np.maximum(den, 1e-12), np.where(equal, 1.0, 0.0))


def _geometry(x: np.ndarray, bg: np.ndarray, fg: np.ndarray, found: np.ndarray, valid: np.ndarray):
    """Area (pixels), centroid (pixels) and extent (pixels) of the shape from its
    coverage map alpha: each pixel's position between the background and the shape
    colour, which for an antialiased (or blurred, or downsampled) edge pixel is the
    share of the pixel the shape covers. Sums of alpha are unbiased under blur and
    noise, so the area and centroid are exact to a fraction of a pixel."""
    count, h, w, _ = x.shape
    step = np.where(found[:, None], fg - bg, 1.0)
    alpha = ((x - bg[:, None, None]) * step[:, None, None]).sum(-1) / (step**2).sum(-1)[:, None, None] * valid
    core = _box3(alpha) > 0.5
    region = _dilate(core, max(2, round(min(h, w) / 32))) & found[:, None, None]
    a = alpha * region
    area = a.sum(axis=(1, 2))
    safe = np.where(area > 0, area, 1.0)
    cx = (a.sum(axis=1) * (np.arange(w) + 0.5)).sum(axis=1) / safe
    cy = (a.sum(axis=2) * (np.arange(h) + 0.5)).sum(axis=1) / safe
    # the extent from coverage clipped to [0, 1]: a sharpening resampler (Lanczos,
    # bicubic) overshoots inside an edge, which would lengthen every row and column
    c = np.clip(alpha, 0.0, 1.0) * region
    extent = np.maximum(c.sum(axis=1).max(axis=1), c.sum(axis=2).max(axis=1))
    # skewness of the vertical profile: a triangle (apex up) has -0.566, circles and
    # squares 0; blur shrinks a small triangle's apex (and its extent) but keeps this
    ys = np.arange(h) + 0.5 - cy[:, None]
    profile = a.sum(axis=2)
    var = (profile * ys**2).sum(axis=1) / safe
    skew = (profile * ys**3).sum(axis=1) / safe / np.maximum(var, 1e-9) ** 1.5
    return area, cx, cy, extent, skew, region


def _colour_reading(bg: np.ndarray, fg: np.ndarray, found: np.ndarray, grain: np.ndarray):
    """Gray status, colour and background indices. A scene with a chromatic colour
    is a colour scene (nearest palette entries in RGB). An achromatic one is either a
    grayscale scene (its lumas match the palette's lumas) or a white shape on black or
    grey; when both readings fit equally (the same pixels), the noise decides: the
    same in every channel for a grayscale scene."""
    chroma = lambda c: c.max(axis=-1) - c.min(axis=-1)  # noqa: E731
    fg_seen = np.where(found[:, None], fg, bg)
    chromatic = (chroma(bg) >= ACHROMATIC) | (found & (chroma(fg_seen) >= ACHROMATIC))
    l_bg, l_fg = bg @ _LUMA, fg_seen @ _LUMA
    gray_cost = np.abs(l_bg[:, None] - _BG_LUMA).min(axis=1) + np.where(
        found, np.abs(l_fg[:, None] - _FG_LUMA).min(axis=1), 0.0
    )
    achromatic_bg = np.array([chroma(c) < ACHROMATIC for c in _BG_RGB])
    white = _FG_LUMA[list(COLOURS).index("white")]
    colour_cost = np.abs(l_bg[:, None] - _BG_LUMA[achromatic_bg]).min(axis=1) + np.where(
        found, np.abs(l_fg - white), np.inf
    )
    tie = np.abs(gray_cost - colour_cost) < TIE
    gray = ~chromatic & np.where(tie, grain >= SHARED_GRAIN, gray_cost < colour_cost)
    bg_rgb = ((bg[:, None] - _BG_RGB) ** 2).sum(-1).argmin(axis=1)
    bg_gray = np.abs(l_bg[:, None] - _BG_LUMA).argmin(axis=1)
    # the shape's colour relative to the background's palette entry: a colour cast
    # (generated samples drift a few levels) shifts both alike and cancels
    fg_rgb = fg_seen - (bg - _BG_RGB[bg_rgb])
    colour_rgb = ((fg_rgb[:, None] - _FG_RGB) ** 2).sum(-1).argmin(axis=1)
    # with no shape in sight this picks, in a grayscale scene, the colour the background hides
    colour_gray = np.abs((l_fg - l_bg + _BG_LUMA[bg_gray])[:, None] - _FG_LUMA).argmin(axis=1)
    return gray, np.where(gray, colour_gray, colour_rgb), np.where(gray, bg_gray, bg_rgb)


def _classify_shape(fill: np.ndarray, skew: np.ndarray) -> np.ndarray:
    """Index into SHAPES: the nearest of the shapes' points in (log2 fill ratio,
    skewness / -0.566): square (0, 0), circle (log2(pi/4), 0), triangle (-1, 1). Fill
    (area / extent^2) tells the circle from the square; the skewness tells the
    triangle even where blur has shortened its apex and so raised its fill."""
    u = np.log2(np.clip(fill, 1e-3, None))
    v = skew / TRIANGLE_SKEW
    points = np.array([[math.log2(FILL[s]), 1.0 if s == "triangle" else 0.0] for s in SHAPES])
    return ((u[:, None] - points[:, 0]) ** 2 + (v[:, None] - points[:, 1]) ** 2).argmin(axis=1)


_KEYS = ("shape", "colour", "background", "gray", "size", "x", "y", "found")


def measure(images: np.ndarray) -> dict[str, np.ndarray]:
    """Every factor of a batch of scenes as arrays: ``shape``, ``colour``,
    ``background`` (indices into SHAPES, COLOURS, BACKGROUNDS), ``gray`` (bool),
    ``size``, ``x``, ``y`` (fractions of the side) and ``found`` (whether a shape
    was seen; where not, shape, size and position are the priors' middles)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"scene images must be (B, H, W, 3), got {images.shape}")
    if not len(images):
        return {k: np.zeros(0, dtype=bool if k in ("gray", "found") else float) for k in _KEYS}
    # a chunk at a time keeps the float64 intermediates small whatever the batch
    parts = [_measure(images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in _KEYS}


def _measure(images: np.ndarray) -> dict[str, np.ndarray]:
    x = np.clip(np.nan_to_num(np.asarray(images, dtype=np.float64)), 0.0, 1.0)
    _, h, w, _ = x.shape
    smooth = _box3(x)
    valid, ring = _scene_masks(x.shape[:3], _fill_margins(x))
    pixels = smooth.reshape(len(x), -1, 3)
    bg = _masked_median(pixels, ring.reshape(len(x), -1))
    d = np.sqrt(((smooth - bg[:, None, None]) ** 2).sum(-1)) * valid
    top = np.percentile(d.reshape(len(x), -1), 99, axis=1)
    found = top >= MIN_CONTRAST
    fg = _masked_median(pixels, (d >= 0.7 * top[:, None, None]).reshape(len(x), -1))
    fg = np.where(found[:, None], np.nan_to_num(fg), bg)
    area, cx, cy, extent, skew, region = _geometry(x, bg, fg, found, valid)
    found &= area > 1.0
    fill = area / np.maximum(extent, 1e-6) ** 2
    shape = np.where(found, _classify_shape(fill, skew), SHAPES.index("circle"))
    side = np.sqrt(np.maximum(area, 0) / np.array([FILL[s] for s in SHAPES])[shape])
    grain = _shared_grain(x, smooth, valid & ~_dilate(region, 1))
    gray, colour, background = _colour_reading(bg, fg, found, grain)
    middle = lambda r: 0.5 * (r[0] + r[1])  # noqa: E731
    size = np.where(found, side / w, middle(SIZE_RANGE))
    triangle = shape == SHAPES.index("triangle")
    return {
        "shape": shape,
        "colour": colour,
        "background": background,
        "gray": gray,
        "size": np.clip(size, 0.0, 1.0),
        "x": np.clip(np.where(found, cx / w, middle(POSITION_RANGE)), 0.0, 1.0),
        "y": np.clip(np.where(found, (cy - np.where(triangle, side / 6, 0.0)) / h, middle(POSITION_RANGE)), 0.0, 1.0),
        "found": found,
    }


def parse_scenes(images: np.ndarray) -> list[dict]:
    """The factors of each scene in a (B, H, W, 3) float RGB [0, 1] batch, as the
    dicts :func:`rcdm_cli.scenes.make_scenes` records (shape, colour,
    background, size, x, y, gray). Never raises on an odd image: where no shape is
    seen, the most likely reading is returned."""
    m = measure(images)
    return [
        {
            "shape": SHAPES[m["shape"][i]],
            "colour": COLOUR_NAMES[m["colour"][i]],
            "background": BACKGROUND_NAMES[m["background"][i]],
            "size": float(m["size"][i]),
            "x": float(m["x"][i]),
            "y": float(m["y"][i]),
            "gray": bool(m["gray"][i]),
        }
        for i in range(len(m["shape"]))
    ]


# ---------------------------------------------------------------------------
# registration: one parse per batch, shared by the seven attributes

_LAST: list = [None, None]


def _measured(images: np.ndarray) -> dict[str, np.ndarray]:
    """The last batch's measurement, reused when the same pixels come back (the
    seven scene attributes are computed one after another on one batch)."""
    x = np.ascontiguousarray(images, dtype=np.float32)
    key = (x.shape, hashlib.blake2b(x.data, digest_size=16).digest())
    if _LAST[0] != key:
        _LAST[:] = [key, measure(x)]
    return _LAST[1]


_HOW = (
    " The scene parser: black fill along an edge (from a shift or a pad) is left out; the "
    "background is the median colour of the outer ring (1/32 of the side) of what remains; the "
    "shape is what differs from it (after a 3x3 blur) by at least 0.05 in RGB, its colour the "
    "median of its most distinct pixels. A coverage map (each pixel's position between the "
    "background and the shape colour, i.e. the share of the pixel the shape covers) gives the "
    "shape's area and centroid as sums, which blur, noise and downsampling leave unbiased."
)

SPECS = (
    AttributeSpec(
        name="scene-shape",
        description="the scene's shape (circle, square, triangle), read by the scene parser",
        compute=lambda images: _measured(images)["shape"].astype(np.int64),
        categories=SHAPES,
        group="scene",
        default=False,
        formula=(
            "The fill ratio of the shape: area / extent^2, the extent being the largest "
            "coverage summed along a row or a column (the shape's width or height in pixels). "
            "A square fills its bounding box (1), a circle pi/4, a triangle 1/2; the cuts lie "
            "halfway between (geometric means 0.886 and 0.627). With no shape in sight: circle."
            + _HOW
        ),
    ),
    AttributeSpec(
        name="scene-colour",
        description="the shape's palette colour, read by the scene parser",
        compute=lambda images: _measured(images)["colour"].astype(np.int64),
        categories=COLOUR_NAMES,
        group="scene",
        default=False,
        formula=(
            "The palette colour nearest (in RGB) to the shape's median colour, taken relative to "
            "the background's palette entry (a colour cast shifts both and cancels); in a "
            "grayscale scene the colour whose luma (BT.601) is nearest, and with no shape in sight "
            "the colour whose luma is nearest the background's (the one a grayscale scene would "
            "hide)." + _HOW
        ),
    ),
    AttributeSpec(
        name="scene-background",
        description="the scene's background palette colour, read by the scene parser",
        compute=lambda images: _measured(images)["background"].astype(np.int64),
        categories=BACKGROUND_NAMES,
        group="scene",
        default=False,
        formula=(
            "The background palette entry nearest (in RGB) to the median colour of the outer "
            "ring (1/32 of the side); in a grayscale scene the entry with the nearest luma." + _HOW
        ),
    ),
    AttributeSpec(
        name="scene-gray",
        description="whether the scene is rendered in grayscale, read by the scene parser",
        compute=lambda images: _measured(images)["gray"].astype(np.int64),
        categories=GRAY_CATEGORIES,
        group="scene",
        default=False,
        formula=(
            "Colour when the background or the shape has chroma (max - min channel) of 0.1 or "
            "more. Otherwise the scene is achromatic: grayscale when its background and shape "
            "lumas fit the palette's grayscale lumas better than a white shape on black or grey "
            "(the only achromatic colour scenes); where both fit, grayscale when the pixel "
            "noise is correlated between channels (the renderer adds the same noise to every "
            "channel of a grayscale scene, independent noise to a colour scene's)." + _HOW
        ),
    ),
    AttributeSpec(
        name="scene-size",
        description="the shape's extent as a fraction of the side, read by the scene parser",
        compute=lambda images: _measured(images)["size"],
        group="scene",
        default=False,
        formula=(
            "sqrt(area / fill) / side, the fill being that of the shape read (pi/4, 1, 1/2): the "
            "side of the shape's bounding square, as the renderer's size factor. With no shape "
            "in sight: 0.45, the middle of the sizes drawn." + _HOW
        ),
    ),
    AttributeSpec(
        name="scene-x",
        description="horizontal centre of the shape's bounding box, read by the scene parser",
        compute=lambda images: _measured(images)["x"],
        group="scene",
        default=False,
        formula=(
            "The coverage-weighted centroid's x / width: circles, squares and triangles are "
            "left-right symmetric, so it is the bounding box's centre. 0.5 with no shape." + _HOW
        ),
    ),
    AttributeSpec(
        name="scene-y",
        description="vertical centre of the shape's bounding box (downwards), read by the scene parser",
        compute=lambda images: _measured(images)["y"],
        group="scene",
        default=False,
        formula=(
            "The coverage-weighted centroid's y / height, less size/6 for a triangle (whose "
            "centroid lies 2/3 of the way from apex to base, below its box's centre). 0.5 with "
            "no shape." + _HOW
        ),
    ),
)


@hookimpl
def register_attributes(register):
    for spec in SPECS:
        register(spec)
