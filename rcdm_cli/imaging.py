"""Tensors to pictures: PNG files and labelled grids."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from rcdm_cli.fileio import write_bytes

LABEL_HEIGHT = 14
MIN_TILE = 96


def to_pil(image: torch.Tensor) -> Image.Image:
    """A 3xHxW tensor in [-1, 1] as an 8-bit RGB image (values truncated, as the
    original scripts did, so PNGs match theirs byte for byte)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3xHxW image, got shape {tuple(image.shape)}")
    arr = ((image.detach().float().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: Image.Image | torch.Tensor, path: str | Path) -> None:
    if isinstance(image, torch.Tensor):
        image = to_pil(image)
    write_bytes(path, png_bytes(image))


def make_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None = None,
    columns: int | None = None,
    padding: int = 2,
) -> Image.Image:
    """Tiles in rows of ``columns`` (default: all in one row), each with its label
    underneath; small images are enlarged (nearest neighbour) so labels stay legible."""
    if not images:
        raise ValueError("no images to put in a grid")
    columns = columns or len(images)
    side = max(max(im.width, im.height) for im in images)
    tile = side if side >= MIN_TILE else side * -(-MIN_TILE // side)
    label_h = LABEL_HEIGHT if labels else 0
    rows = -(-len(images) // columns)
    width = columns * (tile + padding) + padding
    height = rows * (tile + label_h + padding) + padding
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        x = padding + c * (tile + padding)
        y = padding + r * (tile + label_h + padding)
        canvas.paste(im.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
        if labels:
            draw.text((x + 2, y + tile + 1), labels[i][: max(4, tile // 6)], fill=(0, 0, 0), font=font)
    return canvas
