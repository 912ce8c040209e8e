"""Noise schedules, computed in float64 as the released models' were."""

from __future__ import annotations

import math

import numpy as np

from rcdm_cli.errors import UsageError


def linear_betas(steps: int) -> np.ndarray:
    """Ho et al.'s linear schedule, rescaled so that any step count covers the same
    noise range as 1000 steps from 1e-4 to 0.02."""
    scale = 1000 / steps
    return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)


def cosine_betas(steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule on alpha-bar, with betas capped below 1."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array(
        [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)],
        dtype=np.float64,
    )


def named_betas(name: str, steps: int) -> np.ndarray:
    if name == "linear":
        return linear_betas(steps)
    if name == "cosine":
        return cosine_betas(steps)
    raise UsageError(f"unknown noise schedule {name!r}: expected 'linear' or 'cosine'")
