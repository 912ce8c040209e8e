"""The files a sampling run leaves behind: one PNG per sample, one labelled grid per
conditioning input, an overview of a run over several inputs, optionally the raw
tensors, and a manifest.

Paths are planned before any work starts, so that an existing file can be refused
(without ``--overwrite``) before minutes of sampling are spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from rcdm_cli.imaging import make_grid, save_png, to_pil


# The overview shows this many inputs at most: a picture of a million rows would be
# unreadable, and would need every sample in memory.
OVERVIEW_INPUTS = 16


@dataclass
class SampleLayout:
    out: Path
    names: list[str]
    n: int
    overview: bool = False  # also an overview.png of every input's samples

    def sample_path(self, j: int, k: int) -> Path:
        return self.out / self.names[j] / f"sample-{k:03d}.png"

    def grid_path(self, j: int) -> Path:
        return self.out / f"{self.names[j]}-grid.png"

    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.json"

    @property
    def tensors_path(self) -> Path:
        return self.out / "samples.safetensors"

    @property
    def overview_path(self) -> Path | None:
        return self.out / "overview.png" if self.overview else None

    def planned(self, save_tensors: bool) -> Iterator[Path]:
        """Every file the run will write, one at a time (a run may plan millions)."""
        for j in range(len(self.names)):
            yield from (self.sample_path(j, k) for k in range(self.n))
            yield self.grid_path(j)
        yield self.manifest_path
        if self.overview:
            yield self.overview_path
        if save_tensors:
            yield self.tensors_path


def unique_names(stems: list[str]) -> list[str]:
    """Output names from input stems, numbered where two inputs share a stem; a number
    is never one that another input's own stem already takes (``a``, ``a``, ``a-2``)."""
    taken = set(stems)
    used: set[str] = set()
    names = []
    for stem in stems:
        name, k = stem, 1
        while name in used or (name != stem and name in taken):
            k += 1
            name = f"{stem}-{k}"
        used.add(name)
        names.append(name)
    return names


def write_input(
    layout: SampleLayout, j: int, samples: torch.Tensor, conditioning: Image.Image | None = None
) -> tuple[list[str], str]:
    """Write input ``j``'s samples (``samples`` is n x 3 x H x W) and its grid, the
    conditioning image first when there is one. Returns (sample paths, grid path)."""
    tiles, labels, paths = [], [], []
    if conditioning is not None:
        tiles.append(conditioning)
        labels.append("input")
    for k in range(layout.n):
        image = to_pil(samples[k])
        path = layout.sample_path(j, k)
        save_png(image, path)
        paths.append(str(path))
        tiles.append(image)
        labels.append(f"#{k}")
    save_png(make_grid(tiles, labels, columns=min(len(tiles), 9)), layout.grid_path(j))
    return paths, str(layout.grid_path(j))


class Overview:
    """One picture of a run over several inputs, a row per input: the input (labelled
    with its output name) and its samples, labelled as in its grid. Rows are added as
    inputs finish; only the first :data:`OVERVIEW_INPUTS` are kept."""

    def __init__(self, path: Path, n: int):
        self.path, self.n = path, n
        self.rows: list[tuple[list[Image.Image], list[str]]] = []

    def add(self, name: str, samples: torch.Tensor, conditioning: Image.Image | None = None) -> None:
        if len(self.rows) >= OVERVIEW_INPUTS:
            return
        tiles = [to_pil(samples[k]) for k in range(self.n)]
        labels = [f"#{k}" for k in range(self.n)]
        if conditioning is not None:
            tiles, labels = [conditioning, *tiles], [name, *labels]
        else:  # vectors: the name goes with the first sample
            labels[0] = f"{name} #0"
        self.rows.append((tiles, labels))

    def save(self) -> str:
        columns = max(len(tiles) for tiles, _ in self.rows)
        blank = Image.new("RGB", self.rows[0][0][0].size, (255, 255, 255))
        tiles = [t for row, _ in self.rows for t in row + [blank] * (columns - len(row))]
        labels = [x for _, row in self.rows for x in row + [""] * (columns - len(row))]
        save_png(make_grid(tiles, labels, columns=columns), self.path)
        return str(self.path)


def write_samples(
    layout: SampleLayout,
    samples: torch.Tensor,
    conditioning: list[Image.Image | None] | None = None,
) -> dict[str, list[list[str]] | list[str]]:
    """Write every input's samples and grid. Returns the written paths, per input."""
    sample_paths: list[list[str]] = []
    grid_paths: list[str] = []
    for j in range(len(layout.names)):
        paths, grid = write_input(layout, j, samples[j], conditioning[j] if conditioning else None)
        sample_paths.append(paths)
        grid_paths.append(grid)
    return {"samples": sample_paths, "grids": grid_paths}


@dataclass
class StripLayout:
    """Interpolation output: ``frames/row-R/frame-F.png``, ``strip.png`` (one row per
    noise, the two end images framing the path) and an optional animation."""

    out: Path
    frames: int
    rows: int
    animation: str | None = None

    def frame_path(self, row: int, frame: int) -> Path:
        return self.out / "frames" / f"row-{row:02d}" / f"frame-{frame:03d}.png"

    @property
    def strip_path(self) -> Path:
        return self.out / "strip.png"

    @property
    def animation_path(self) -> Path | None:
        return self.out / f"interpolation.{self.animation}" if self.animation else None

    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.json"

    def planned(self) -> list[Path]:
        paths = [self.frame_path(r, f) for r in range(self.rows) for f in range(self.frames)]
        paths += [self.strip_path, self.manifest_path]
        if self.animation_path:
            paths.append(self.animation_path)
        return paths


def write_strip(
    layout: StripLayout, samples: torch.Tensor, ends: tuple[Image.Image, Image.Image], positions: list[float]
) -> dict:
    """``samples`` is (frames, rows, 3, H, W). Returns the written paths."""
    from rcdm_cli.fileio import write_bytes

    tiles, labels = [], []
    frames_written: list[list[str]] = []
    for r in range(layout.rows):
        tiles.append(ends[0])
        labels.append("A")
        row_paths = []
        for f in range(layout.frames):
            image = to_pil(samples[f, r])
            save_png(image, layout.frame_path(r, f))
            row_paths.append(str(layout.frame_path(r, f)))
            tiles.append(image)
            labels.append(f"t={positions[f]:.2f}")
        tiles.append(ends[1])
        labels.append("B")
        frames_written.append(row_paths)
    save_png(make_grid(tiles, labels, columns=layout.frames + 2), layout.strip_path)
    written = {"frames": frames_written, "strip": str(layout.strip_path), "animation": None}
    if layout.animation_path is not None:
        sequence = [to_pil(samples[f, 0]) for f in range(layout.frames)]
        sequence = sequence + sequence[-2:0:-1]  # there and back again, for a seamless loop
        import io

        buf = io.BytesIO()
        fmt = "GIF" if layout.animation == "gif" else "WEBP"
        # lossless WebP: lossy encoding blurs small frame-to-frame changes, and merges
        # nearly identical frames, which is what an interpolation is made of
        extra = {"lossless": True} if fmt == "WEBP" else {}
        sequence[0].save(buf, format=fmt, save_all=True, append_images=sequence[1:], duration=150, loop=0, **extra)
        write_bytes(layout.animation_path, buf.getvalue())
        written["animation"] = str(layout.animation_path)
    return written
