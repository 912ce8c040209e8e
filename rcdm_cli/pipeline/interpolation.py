"""``rcdm interpolate`` as a library: a path between two images' representations,
sampled at evenly spaced points, written as frames, a strip and a manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from rcdm_cli import __version__
from rcdm_cli.errors import UsageError
from rcdm_cli.imaging import to_pil
from rcdm_cli.outputs import StripLayout, write_strip
from rcdm_cli.pipeline.representations import interpolate, interpolation_weights
from rcdm_cli.pipeline.sampling import SampleResult, check_fits_memory, resolved_eta
from rcdm_cli.preprocessing import diffusion_target

MODES = ("lerp", "slerp")


@dataclass
class Interpolation:
    """The path from ``inputs[0]`` (t = 0) to ``inputs[1]`` (t = 1) at ``frames``
    points, ``n`` samples at each; checked as it is made, before any weights load."""

    inputs: tuple[Path, Path]
    frames: int
    mode: str = "lerp"
    same_noise: bool = True
    n: int = 1
    positions: list[float] = field(init=False)

    def __post_init__(self):
        if self.n <= 0:
            raise UsageError(f"-n must be positive, got {self.n}")
        if self.mode not in MODES:
            raise UsageError(f"unknown interpolation mode {self.mode!r}; choose lerp or slerp")
        self.positions = interpolation_weights(self.frames).tolist()

    def check(self, image_size: int) -> None:
        """Every frame of every sample is held at once: refuse what cannot fit."""
        check_fits_memory(self.frames * self.n, image_size, f"--frames {self.frames} x -n {self.n}")

    def path(self, ends: torch.Tensor) -> torch.Tensor:
        """The representations along the path between the two ends' (one row each)."""
        return interpolate(ends[0], ends[1], self.frames, self.mode)

    def write(
        self, layout: StripLayout, run, options, network_calls: int, pictures: list[Image.Image], result: SampleResult
    ) -> dict:
        """Write the frames, the strip (the two inputs framing each row) and the
        animation, if any; returns the manifest, which the caller writes."""
        shown = tuple(to_pil(diffusion_target(im, run.meta.image_size)) for im in pictures)
        written = write_strip(layout, result.samples, shown, self.positions)
        return {
            "command": "interpolate",
            "rcdm_version": __version__,
            "inputs": [str(p) for p in self.inputs],
            "checkpoint": run.checkpoint_info(),
            "encoder": run.encoder_info(),
            "mode": self.mode,
            "positions": self.positions,
            "same_noise": self.same_noise,
            "n": self.n,
            "sampling": {**options.to_dict(), "eta": resolved_eta(options), "network_calls": network_calls},
            "device": str(run.device),
            "outputs": written,
            "seeds": result.seeds if not self.same_noise else result.seeds[0],
            "timings": {"sample_seconds": round(result.seconds, 3)},
        }
