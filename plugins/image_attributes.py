"""Built-in model-free attributes: what a person sees in any photograph (how colourful
it is, whether it is grayscale, the background's colour, where the object is),
measured with fixed formulas so that conditioning images and samples are judged by
the same rule and no second network's biases leak into the judgement.

Every function takes a float (B, H, W, 3) array of RGB values in [0, 1] (gamma-encoded
sRGB, as images are stored) and works on the whole batch at once.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict

import numpy as np

from rcdm_cli.plugin import AttributeSpec, hookimpl

# ITU-R BT.601 luma weights: those of PIL's "L" mode and of the demo scenes' grayscale.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Grayscale rule: an image is grayscale when its 99th percentile of per-pixel chroma
# (max - min of R, G, B, after a 3x3 box blur) is below GRAY_CHROMA (15 levels of 255).
GRAY_CHROMA = 0.06
GRAY_PERCENTILE = 99.0

BORDER_SHARE = 1 / 8  # background-colour: the band of this share of each side
HIST_BINS = 4  # colour-histogram: bins per channel
CHUNK = 64  # images computed at once

# Foreground estimate (see foreground_mask).
FG_GRID = 64  # analysis resolution, pixels on the longer side
FG_PROTOTYPES = 6  # k-means prototypes of the border colours
FG_KMEANS_STEPS = 8
FG_MIN_SHARE = 0.1  # a prototype must explain this share of the border to count as background
FG_MIN_CONTRAST = 4.0  # CIELAB delta E the foreground must stand out by, on average

# sRGB (D65) -> CIE XYZ, and the D65 white point.
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float32,
)
_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)


# ---------------------------------------------------------------------------
# shared helpers


def _batch(images: np.ndarray) -> np.ndarray:
    """Float32 and clipped to [0, 1] (NaN read as 0): samples from a diffusion model
    overshoot a little, and every formula below assumes the display range."""
    return np.clip(np.nan_to_num(np.asarray(images, dtype=np.float32)), 0.0, 1.0)


def _per_image(x: np.ndarray, channels: int = 0) -> np.ndarray:
    """(B, pixels) or (B, pixels, channels) view of a batch."""
    tail = (channels,) if channels else ()
    return x.reshape((x.shape[0], -1) + tail) if x.shape[0] else x.reshape((0, 1) + tail)


def _chunked(fn):
    """``fn`` applied CHUNK images at a time and concatenated: the intermediates (Lab
    copies, distances to prototypes) stay a few MB whatever the batch."""

    @functools.wraps(fn)
    def apply(images: np.ndarray) -> np.ndarray:
        if len(images) <= CHUNK:
            return fn(images)
        return np.concatenate([fn(images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)])

    return apply


def luma(images: np.ndarray) -> np.ndarray:
    """(B, H, W) BT.601 luma of gamma-encoded RGB: the brightness a grayscale
    conversion shows."""
    return images @ LUMA_WEIGHTS


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of sRGB values in [0, 1]; L in 0..100, a and b roughly
    -100..100. Euclidean distance in Lab approximates perceived colour difference,
    which RGB distance does not."""
    rgb = np.asarray(rgb, dtype=np.float32)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = (linear @ _RGB_TO_XYZ.T) / _WHITE
    delta = 6 / 29
    f = np.where(xyz > delta**3, np.cbrt(np.maximum(xyz, delta**3)), xyz / (3 * delta**2) + 4 / 29)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=-1)


def box3(x: np.ndarray) -> np.ndarray:
    """A 3x3 mean over axes 1 and 2 (edges replicated): suppresses pixel noise that
    differs between channels while keeping regions of a few pixels."""
    pad = [(0, 0), (1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 3)
    p = np.pad(x, pad, mode="edge")
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def border_mask(height: int, width: int, band: int) -> np.ndarray:
    """(H, W) True on the outer ``band`` pixels of every side."""
    mask = np.zeros((height, width), dtype=bool)
    mask[:band], mask[-band:], mask[:, :band], mask[:, -band:] = True, True, True, True
    return mask


# ---------------------------------------------------------------------------
# colour


def colourfulness(images: np.ndarray) -> np.ndarray:
    """Hasler & Suesstrunk (2003), on values in [0, 1]."""
    x = _batch(images)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = _per_image(r - g)
    yb = _per_image(0.5 * (r + g) - b)
    spread = np.sqrt(rg.var(axis=1) + yb.var(axis=1))
    mean = np.sqrt(rg.mean(axis=1) ** 2 + yb.mean(axis=1) ** 2)
    return spread + 0.3 * mean


def chroma_level(images: np.ndarray) -> np.ndarray:
    """The 99th percentile of per-pixel chroma (max - min channel) after a 3x3 box
    blur: the chroma of the image's most coloured percent, with noise that differs
    between channels averaged away first."""
    x = box3(_batch(images))
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    chroma = _per_image(np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b))
    return np.percentile(chroma, GRAY_PERCENTILE, axis=1)


def grayscale(images: np.ndarray) -> np.ndarray:
    return (chroma_level(images) < GRAY_CHROMA).astype(np.int64)


def background_colour(images: np.ndarray) -> np.ndarray:
    """Component-wise median Lab of the border band, / 100."""
    x = _batch(images)
    _, h, w, _ = x.shape
    band = max(1, round(min(h, w) * BORDER_SHARE))
    pixels = x[:, border_mask(h, w, band)]  # (B, P, 3)
    return np.median(srgb_to_lab(pixels), axis=1) / 100.0


def colour_histogram(images: np.ndarray) -> np.ndarray:
    """Square roots of a normalised 4x4x4 joint RGB histogram (rows of unit norm)."""
    x = _batch(images)
    count = len(x)
    q = _per_image(np.minimum((x * HIST_BINS).astype(np.int64), HIST_BINS - 1), 3)
    cells = HIST_BINS**3
    index = (q[..., 0] * HIST_BINS + q[..., 1]) * HIST_BINS + q[..., 2]
    index += np.arange(count)[:, None] * cells
    hist = np.bincount(index.ravel(), minlength=count * cells).reshape(count, cells)
    return np.sqrt(hist / q.shape[1])


def hue(images: np.ndarray) -> np.ndarray:
    """Mean (a*, b*) / 100 over all pixels."""
    x = _batch(images)
    lab = _per_image(srgb_to_lab(x), 3)
    return lab[..., 1:].mean(axis=1) / 100.0


# ---------------------------------------------------------------------------
# light and structure


def brightness(images: np.ndarray) -> np.ndarray:
    return _per_image(luma(_batch(images))).mean(axis=1)


def contrast(images: np.ndarray) -> np.ndarray:
    return _per_image(luma(_batch(images))).std(axis=1)


def detail(images: np.ndarray) -> np.ndarray:
    """RMS of the luma gradient (forward differences, per pixel)."""
    y = luma(_batch(images))
    total = np.zeros(len(y))
    for g in (np.diff(y, axis=2), np.diff(y, axis=1)):
        total += (g**2).sum(axis=(1, 2)) / max(g.shape[1] * g.shape[2], 1)
    return np.sqrt(total)


# ---------------------------------------------------------------------------
# foreground


def _downsample(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Block means bringing the longer side to about FG_GRID pixels (the remainder
    rows and columns are dropped), and the block size. The estimate then costs the
    same at any input size and reads shapes, not pixel texture."""
    _, h, w, _ = x.shape
    k = max(1, round(max(h, w) / FG_GRID))
    if k == 1:
        return x, 1
    x = x[:, : h // k * k, : w // k * k]
    total = sum(x[:, i::k, j::k] for i in range(k) for j in range(k))
    return total / (k * k), k


def _farthest_point_init(points: np.ndarray, k: int) -> np.ndarray:
    """Deterministic k-means seeds: the component-wise median, then repeatedly the
    point farthest from every seed so far (a set function: the order of the pixels
    does not matter, so a mirrored image gets the same seeds)."""
    count = len(points)
    seeds = [np.median(points, axis=1)]
    nearest = ((points - seeds[0][:, None]) ** 2).sum(-1)
    for _ in range(k - 1):
        far = points[np.arange(count), nearest.argmax(axis=1)]
        seeds.append(far)
        nearest = np.minimum(nearest, ((points - far[:, None]) ** 2).sum(-1))
    return np.stack(seeds, axis=1)


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(B, ..., 3) points, (B, k, 3) centres -> (B, ..., k) squared distances, by
    |p|^2 - 2 p.c + |c|^2 (one matrix product, no (B, ..., k, 3) temporary)."""
    flat = points.reshape(len(points), int(np.prod(points.shape[1:-1])), 3)
    cross = flat @ centres.transpose(0, 2, 1)
    d = (flat**2).sum(-1, keepdims=True) - 2 * cross + (centres**2).sum(-1)[:, None, :]
    return np.maximum(d, 0).reshape(points.shape[:-1] + (centres.shape[1],))


def _kmeans(points: np.ndarray, k: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, P, 3) -> prototypes (B, k, 3) and the share of points each explains."""
    centres = _farthest_point_init(points, k)
    eye = np.eye(k, dtype=points.dtype)
    for _ in range(steps):
        onehot = eye[_squared_distances(points, centres).argmin(axis=2)]  # (B, P, k)
        counts = onehot.sum(axis=1)
        sums = onehot.transpose(0, 2, 1) @ points
        centres = np.where(counts[..., None] > 0, sums / np.maximum(counts, 1)[..., None], centres)
    share = eye[_squared_distances(points, centres).argmin(axis=2)].mean(axis=1)
    return centres, share


def _otsu(values: np.ndarray, bins: int = 64) -> np.ndarray:
    """Otsu's threshold of each row of (B, N) non-negative values."""
    count, n = values.shape
    top = values.max(axis=1, keepdims=True) + 1e-6
    index = np.minimum((values / top * bins).astype(np.int64), bins - 1) + np.arange(count)[:, None] * bins
    p = np.bincount(index.ravel(), minlength=count * bins).reshape(count, bins) / n
    centres = (np.arange(bins) + 0.5) / bins
    omega = np.cumsum(p, axis=1)
    mu = np.cumsum(p * centres, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[:, -1:] * omega - mu) ** 2 / (omega * (1 - omega))
    between = np.nan_to_num(between, nan=0.0, posinf=0.0)
    return (between.argmax(axis=1) + 1) / bins * top[:, 0]


def _intermeans(values: np.ndarray, start: np.ndarray, steps: int = 4) -> np.ndarray:
    """Ridler & Calvard's iterative selection from ``start``: the threshold moves to
    the midpoint of the two classes' means, which for an object on a plain background
    is half the contrast, so antialiased edge pixels count in proportion."""
    t = start
    for _ in range(steps):
        above = values > t[:, None]
        n_hi = above.sum(axis=1)
        n_lo = values.shape[1] - n_hi
        hi = np.where(n_hi > 0, (values * above).sum(axis=1) / np.maximum(n_hi, 1), t)
        lo = np.where(n_lo > 0, (values * ~above).sum(axis=1) / np.maximum(n_lo, 1), t)
        t = 0.5 * (hi + lo)
    return t


def saliency(images: np.ndarray) -> tuple[np.ndarray, int]:
    """(B, h, w) CIELAB distance of each pixel of the downsampled image to the
    nearest background prototype (k-means of the border pixels, keeping those that
    explain at least FG_MIN_SHARE of the border), 3x3-smoothed; and the block size."""
    small, k = _downsample(_batch(images))
    lab = srgb_to_lab(small)
    _, h, w, _ = lab.shape
    band = max(1, round(min(h, w) / 32))
    border = lab[:, border_mask(h, w, band)]
    centres, share = _kmeans(border, FG_PROTOTYPES, FG_KMEANS_STEPS)
    d = _squared_distances(lab, centres)  # (B, h, w, k)
    d = np.sqrt(np.where(share[:, None, None, :] >= FG_MIN_SHARE, d, np.inf).min(axis=-1))
    return box3(d), k


def foreground_mask(images: np.ndarray) -> tuple[np.ndarray, int]:
    """(B, h, w) boolean foreground on the downsampled grid, and the block size."""
    s, k = saliency(images)
    flat = _per_image(s)
    t = np.maximum(_intermeans(flat, _otsu(flat)), FG_MIN_CONTRAST / 2)
    mask = flat > t[:, None]
    lift = (flat * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    mask &= (lift >= FG_MIN_CONTRAST)[:, None]  # too faint to be an object: no foreground
    return mask.reshape(s.shape), k


def _foreground_uncached(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    mask, k = foreground_mask(x)
    _, height, width, _ = x.shape
    _, h, w = mask.shape
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    # pixel centres of the grid in fractions of the ORIGINAL image's sides
    xs = (np.arange(w) + 0.5) * k / width
    ys = (np.arange(h) + 0.5) * k / height
    safe = np.maximum(area, 1)
    cx = np.where(area > 0, (mask.sum(axis=1) * xs).sum(axis=1) / safe, 0.5)
    cy = np.where(area > 0, (mask.sum(axis=2) * ys).sum(axis=1) / safe, 0.5)
    scale = np.sqrt(area / (h * w))
    return np.stack([cx, cy, scale], axis=1)


_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CACHE_SIZE = 4


def foreground(images: np.ndarray) -> np.ndarray:
    """(B, 3): x, y (centroid, fractions, y downwards) and scale (sqrt of the area
    fraction) of one foreground estimate. fg-x, fg-y and fg-scale each ask for it on
    the same batch; a few recent answers are kept (keyed on the pixels' hash, so an
    array changed in place is not mistaken for the old one) to compute it once."""
    x = np.ascontiguousarray(images, dtype=np.float32)
    key = (x.shape, hashlib.blake2b(x.data, digest_size=16).digest())
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = _chunked(_foreground_uncached)(x)
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def fg_x(images: np.ndarray) -> np.ndarray:
    return foreground(images)[:, 0]


def fg_y(images: np.ndarray) -> np.ndarray:
    return foreground(images)[:, 1]


def fg_scale(images: np.ndarray) -> np.ndarray:
    return foreground(images)[:, 2]


# ---------------------------------------------------------------------------
# registration

_FOREGROUND = (
    "One foreground estimate, shared by fg-x, fg-y and fg-scale, built on a background "
    "prior (the image's border is background): the image is block-averaged to about 64 px "
    "and converted to CIELAB; the colours of its outer 1/32 are clustered into 6 prototypes "
    "(k-means, deterministic seeds), and prototypes that explain at least 10% of the border "
    "are the background's colours. A pixel's saliency is its Lab distance to the nearest "
    "background prototype, 3x3-smoothed; pixels above a threshold (Otsu's, refined to the "
    "midpoint of the two classes' mean saliencies, at least delta E 2) are foreground, "
    "provided they stand out by delta E 4 on average. An image with no foreground gets "
    "x = y = 0.5 and scale 0. An object that fills the frame or covers more than a tenth "
    "of the border counts as background."
)

SPECS = (
    AttributeSpec(
        name="colourfulness",
        description="how colourful the image is (Hasler & Suesstrunk 2003)",
        compute=_chunked(colourfulness),
        formula=(
            "On RGB in [0, 1]: rg = R - G, yb = (R + G)/2 - B per pixel; M = sqrt(std(rg)^2 + "
            "std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2). rg and yb are opponent-colour "
            "axes, zero for any gray; their spread and mean over the image grow with how "
            "varied and how strong its colours are. Hasler and Suesstrunk fitted this form to "
            "people's colourfulness ratings of photographs (correlation about 0.95). 0 for a "
            "grayscale image; about 0.1 is moderately, above 0.2 very colourful."
        ),
    ),
    AttributeSpec(
        name="grayscale",
        description="whether the image is grayscale (carries almost no chroma)",
        compute=_chunked(grayscale),
        categories=("colour", "grayscale"),
        formula=(
            "Per pixel, chroma = max(R, G, B) - min(R, G, B) after a 3x3 box blur of each channel; "
            "the image is grayscale when the 99th percentile of chroma over its pixels is below "
            f"{GRAY_CHROMA} (15 levels of 255). A gray pixel has equal channels, so chroma 0. The blur "
            "averages away noise that differs between channels (sensor, JPEG or sampling noise); the "
            "99th percentile ignores a few stray pixels but still sees a coloured object covering "
            "more than 1% of the image; 15 levels admits a faint tint (generated samples are never "
            "exactly gray) and is far below the chroma of the coloured parts of colour photographs "
            "(typically 60 levels and more)."
        ),
    ),
    AttributeSpec(
        name="background-colour",
        description="the colour of the image's border band, in CIELAB / 100",
        compute=_chunked(background_colour),
        dim=3,
        components=("L", "a", "b"),
        formula=(
            "The component-wise median CIELAB colour (sRGB -> linear -> XYZ -> L*a*b*, D65) of "
            "the pixels in the outer 1/8 of each side, divided by 100. Objects are usually "
            "framed away from the edges, so the border shows the background; the median "
            "ignores an object that reaches into the band over less than half of it. Lab "
            "because Euclidean distance in Lab approximates perceived colour difference."
        ),
    ),
    AttributeSpec(
        name="colour-histogram",
        description="the distribution of colours (4x4x4 joint RGB histogram, square roots)",
        compute=_chunked(colour_histogram),
        dim=HIST_BINS**3,
        formula=(
            "Each channel is cut into 4 equal bins ([0, 0.25), ..., [0.75, 1]); the share of "
            "pixels in each of the 64 (R, G, B) cells, and the square root of each share. "
            "Rows have unit norm, and the Euclidean distance between two rows is sqrt(2) times "
            "the Hellinger distance between the histograms: 0 for the same palette, sqrt(2) for "
            "palettes that share no cell. It keeps which colours occur and how much, and "
            "ignores where."
        ),
    ),
    AttributeSpec(
        name="brightness",
        description="mean luma (Rec. 601)",
        compute=_chunked(brightness),
        formula=(
            "Mean over the pixels of luma Y' = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, on the "
            "gamma-encoded values, as a grayscale conversion computes it), in [0, 1]. The "
            "weights follow the eye's sensitivity to each primary, so Y' is the lightness a "
            "person sees."
        ),
    ),
    AttributeSpec(
        name="contrast",
        description="RMS contrast: standard deviation of luma",
        compute=_chunked(contrast),
        formula=(
            "Standard deviation over the pixels of luma Y' = 0.299 R + 0.587 G + 0.114 B (RMS "
            "contrast), in [0, 0.5]: how far pixels spread around the mean lightness. 0 for a "
            "flat image, 0.5 for half black, half white."
        ),
    ),
    AttributeSpec(
        name="detail",
        description="high-frequency energy: RMS luma gradient per pixel",
        compute=_chunked(detail),
        formula=(
            "sqrt(mean(dx^2) + mean(dy^2)), dx and dy the differences of luma Y' (BT.601) between "
            "horizontally and vertically adjacent pixels; in [0, sqrt(2)] (0 flat, sqrt(2) a "
            "one-pixel checkerboard). Edges and texture make neighbouring pixels differ; the "
            "squares weight sharp steps more than gentle ramps, so any blur lowers it (a blur "
            "damps every frequency, and this is the image's spectral energy weighted by squared "
            "frequency). It is per pixel: the same scene at twice the side reads lower where its "
            "edges are sharp (they cover a smaller share of the pixels), so compare only images "
            "of one size (as a measurement always does)."
        ),
    ),
    AttributeSpec(
        name="hue",
        description="dominant hue: mean CIELAB chromaticity (a*, b*) / 100",
        compute=_chunked(hue),
        dim=2,
        components=("a", "b"),
        formula=(
            "The mean of (a*, b*) over the pixels, in CIELAB (D65), divided by 100. a* runs green "
            "to red and b* blue to yellow; the mean's direction is the image's dominant hue and its "
            "length how strongly the image leans to it (0 for a gray or evenly coloured image). A "
            "hue rotation (colour jitter) turns the direction."
        ),
    ),
    AttributeSpec(
        name="fg-x",
        description="horizontal position of the foreground (centroid, 0 left .. 1 right)",
        compute=fg_x,
        formula="The foreground's centroid x as a fraction of the width. " + _FOREGROUND,
    ),
    AttributeSpec(
        name="fg-y",
        description="vertical position of the foreground (centroid, 0 top .. 1 bottom)",
        compute=fg_y,
        formula="The foreground's centroid y as a fraction of the height, downwards. " + _FOREGROUND,
    ),
    AttributeSpec(
        name="fg-scale",
        description="size of the foreground: sqrt of its share of the image",
        compute=fg_scale,
        formula=(
            "sqrt(foreground pixels / all pixels), in [0, 1]: the side of a square of the "
            "foreground's area, as a fraction of the image's side (0.886 x the diameter of a "
            "disk). " + _FOREGROUND
        ),
    ),
)


@hookimpl
def register_attributes(register):
    for spec in SPECS:
        register(spec)
