"""The files a sampling run leaves behind: one PNG per sample, one labelled grid per
conditioning input, optionally the raw tensors, and a manifest.

Paths are planned before any work starts, so that an existing file can be refused
(without ``--overwrite``) before minutes of sampling are spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from rcdm_cli.imaging import make_grid, save_png, to_pil


@dataclass
class SampleLayout:
    out: Path
    names: list[str]
    n: int

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

    def planned(self, save_tensors: bool) -> list[Path]:
        paths = [self.sample_path(j, k) for j in range(len(self.names)) for k in range(self.n)]
        paths += [self.grid_path(j) for j in range(len(self.names))]
        paths.append(self.manifest_path)
        if save_tensors:
            paths.append(self.tensors_path)
        return paths


def unique_names(stems: list[str]) -> list[str]:
    """Output names from input stems, numbered where two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for stem in stems:
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}-{count + 1}")
    return names


def write_samples(
    layout: SampleLayout,
    samples: torch.Tensor,
    conditioning: list[Image.Image | None] | None = None,
) -> dict[str, list[list[str]] | list[str]]:
    """Write every sample and one grid per input (the conditioning image first when
    there is one). Returns the written paths, per input."""
    sample_paths: list[list[str]] = []
    grid_paths: list[str] = []
    for j, name in enumerate(layout.names):
        tiles, labels, paths = [], [], []
        cond = conditioning[j] if conditioning else None
        if cond is not None:
            tiles.append(cond)
            labels.append("input")
        for k in range(layout.n):
            image = to_pil(samples[j, k])
            path = layout.sample_path(j, k)
            save_png(image, path)
            paths.append(str(path))
            tiles.append(image)
            labels.append(f"#{k}")
        save_png(make_grid(tiles, labels, columns=min(len(tiles), 9)), layout.grid_path(j))
        sample_paths.append(paths)
        grid_paths.append(str(layout.grid_path(j)))
    return {"samples": sample_paths, "grids": grid_paths}
