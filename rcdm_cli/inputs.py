"""Image inputs: files, folders (searched recursively), glob patterns, or ``-`` for
paths on standard input, one per line; and reading them as a person sees them, with
clear errors."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Iterable, TextIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rcdm_cli.errors import RcdmError, UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Pillow's modes that hold more than 8 bits per sample, and the largest value each can
# hold: a 16-bit PNG opens as I;16 (or I), and converting it to RGB directly clips
# every value above 255, turning a gradient white.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def as_seen(image: Image.Image) -> Image.Image:
    """8-bit RGB as a person sees the file: the EXIF orientation applied (a phone photo
    stands upright), every bit depth scaled to 0-255 rather than clipped, transparency
    composited over white (as a page shows it), CMYK and palettes converted. An
    animated file gives the frame Pillow opened, the first."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in _WIDE_MODES or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = _WIDE_MODES.get(mode, 1.0 if values.size and values.max() <= 1.0 else 255.0)
        gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder``, in sorted order (hidden files and folders
    skipped). Linked sub-folders are followed, as data sets are often assembled from
    links into shared storage; each real folder is visited once, so a link cycle ends."""
    found: list[Path] = []
    visited: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(root) / name
            if not name.startswith(".") and is_image_path(path) and path.is_file():
                found.append(path)
    return sorted(found)


def expand_inputs(items: Iterable[str], stdin: TextIO | None = None) -> list[Path]:
    """Resolve the command line's image arguments, in order, keeping duplicates out."""
    paths: list[Path] = []
    for item in items:
        if item == "-":
            stream = stdin or sys.stdin
            lines = [line.strip() for line in stream.read().splitlines()]
            paths.extend(_expand_one(line) for line in lines if line)
            continue
        paths.append(_expand_one(item))
    flat: list[Path] = []
    seen: set[Path] = set()
    for entry in paths:
        for p in entry if isinstance(entry, list) else [entry]:
            if p not in seen:
                seen.add(p)
                flat.append(p)
    if not flat:
        raise UsageError("no input images given")
    return flat


def _expand_one(item: str) -> Path | list[Path]:
    path = Path(item).expanduser()
    if path.is_dir():
        found = list_images(path)
        if not found:
            raise UsageError(f"{path} contains no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if path.is_file():
        return path
    if any(ch in item for ch in "*?["):
        files = [Path(m) for m in glob.glob(str(path), recursive=True) if Path(m).is_file()]
        if not files:
            raise UsageError(f"no files match {item!r}")
        # like a folder, a pattern stands for the images it matches (`photos/*` may
        # also match a notes.txt); a file named outright is always taken
        matches = sorted(p for p in files if is_image_path(p))
        if not matches:
            raise UsageError(f"no images among the {len(files)} file(s) matching {item!r} ({', '.join(IMAGE_SUFFIXES)})")
        return matches
    raise UsageError(f"no such image: {item}")


def check_image(path: str | Path) -> None:
    """Fail now if ``path`` is missing or not an image (its header, not its pixels),
    so that a long run that reads its images as it goes finds most bad inputs first."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such image: {path}")
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - parsing the header is the check
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(path, exc) from None


def load_image(path: str | Path) -> Image.Image:
    """An RGB image; a missing file is a usage error, an unreadable one a runtime error."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such image: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return as_seen(im)
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> RcdmError:
    if isinstance(exc, Image.DecompressionBombError):
        return RcdmError(
            f"cannot read image {path}: more than {2 * Image.MAX_IMAGE_PIXELS} pixels, Pillow's limit against "
            "decompression bombs (raise PIL.Image.MAX_IMAGE_PIXELS in a script if the image is genuine)"
        )
    return RcdmError(f"cannot read image {path}: {exc}")
