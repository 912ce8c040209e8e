"""What a plugin declares about a visual attribute, and the attribute's values as
vectors.

An attribute is something a person can see in an image (how colourful it is, the
background's colour, where the object is) that ``rcdm evaluate attributes`` measures
on conditioning images and on the samples drawn from their representations. One
convention serves every measure: an attribute's value is a vector whose Euclidean
distances are the attribute's distances. A scalar is a 1-vector; a colour is a point
in a perceptual colour space; a histogram is the square roots of its bins (Euclidean
distance between them is the Hellinger distance, times the square root of 2); a
category is a one-hot vector (two images agree or differ, nothing in between).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rcdm_cli.errors import RcdmError

GROUPS_DOC = {
    "image": "model-free, meaningful on any photograph",
    "scene": "the factors of the demo's procedural scenes, read back by a scene parser",
}


@dataclass(frozen=True)
class AttributeSpec:
    """An attribute as registered by a plugin.

    ``compute(images)`` receives a float32 array (B, H, W, 3) of RGB values in [0, 1],
    every image at one size (the RCDM's image size: conditioning images are first
    brought to the view the diffusion model has of them), and returns

    - for a categorical attribute (``categories`` given): (B,) integer indices into
      ``categories``;
    - otherwise: a (B,) array (``dim`` 1) or a (B, ``dim``) float array whose
      Euclidean distances are the attribute's distances.

    ``components`` names the ``dim`` values when that helps a reader (``("x", "y")``).
    ``group`` says where the attribute is meaningful (``image``: any photograph;
    ``scene``: the demo's scenes; a plugin may name its own); ``default`` attributes
    are measured when the user names none. ``formula`` says how it is computed and why
    it measures what its name says (``rcdm attributes NAME`` shows it).
    """

    name: str
    description: str
    compute: Callable[[np.ndarray], np.ndarray]
    categories: tuple[str, ...] = ()
    dim: int = 1
    components: tuple[str, ...] = ()
    group: str = "image"
    default: bool = True
    formula: str = ""

    @property
    def kind(self) -> str:
        """``category``, ``scalar`` or ``vector``."""
        if self.categories:
            return "category"
        return "scalar" if self.dim == 1 else "vector"

    @property
    def width(self) -> int:
        """The length of the attribute's vectors (the number of categories for a
        category)."""
        return len(self.categories) if self.categories else self.dim

    def values(self, images: np.ndarray) -> np.ndarray:
        """The attribute of each image as a (B, D) float64 vector (one-hot for a
        category), checked: a plugin returning the wrong shape, NaN, or an unknown
        category is named instead of corrupting every number downstream."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"attribute images must be (B, H, W, 3), got {images.shape}")
        raw = np.asarray(self.compute(images))
        count = images.shape[0]
        if self.categories:
            if raw.shape != (count,) or not np.issubdtype(raw.dtype, np.integer):
                raise RcdmError(f"attribute {self.name!r} returned {raw.dtype} {raw.shape}, not ({count},) category indices")
            if raw.size and (raw.min() < 0 or raw.max() >= len(self.categories)):
                raise RcdmError(f"attribute {self.name!r} returned a category index outside 0..{len(self.categories) - 1}")
            return np.eye(len(self.categories))[raw]
        vectors = raw.astype(np.float64).reshape(count, 1) if raw.ndim == 1 else raw.astype(np.float64)
        if vectors.shape != (count, self.dim):
            raise RcdmError(f"attribute {self.name!r} returned shape {raw.shape} for {count} images, not ({count}, {self.dim})")
        if not np.isfinite(vectors).all():
            raise RcdmError(f"attribute {self.name!r} returned NaN or infinite values")
        return vectors

    def summary_value(self, vectors: np.ndarray) -> np.ndarray | None:
        """One number per image that a reader can average, where there is one: a
        scalar's value, or for a two-category attribute the indicator of the second
        category (so its mean is a share: the share of grayscale images). None for
        vectors and larger categories."""
        if self.kind == "scalar":
            return vectors[:, 0]
        if self.kind == "category" and len(self.categories) == 2:
            return vectors[:, 1]
        return None
