"""Exponential moving averages of the weights, one copy per rate.

With warm-up, update ``n`` (counted from 0) uses the decay ``min(rate, (1 + n) /
(10 + n))``: early on the average follows the weights closely, and only after about
``1 / (1 - rate)`` steps does it average over that many. Without it a rate of 0.9999
keeps 99% of the random initial weights after 100 steps, and a short run's EMA
ignores its conditioning entirely.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, rates: list[float]):
        for r in rates:
            if not 0.0 < r < 1.0:
                raise ValueError(f"EMA rates must be in (0, 1), got {r}")
        self.rates = list(rates)
        self.shadows = {r: {k: v.detach().clone().float() for k, v in model.state_dict().items()} for r in rates}

    @staticmethod
    def set_name(rate: float) -> str:
        return f"ema-{rate:g}"

    @staticmethod
    def decay(rate: float, updates_before: int | None) -> float:
        """The decay of the next update: ``rate``, or with warm-up (``updates_before``
        given) the smaller warm-up value while fewer updates have been made."""
        if updates_before is None:
            return rate
        return min(rate, (1 + updates_before) / (10 + updates_before))

    @torch.no_grad()
    def update(self, model: nn.Module, updates_before: int | None = None) -> None:
        """One update; ``updates_before`` (the updates already made) turns warm-up on."""
        params = {k: v.detach() for k, v in model.state_dict().items()}
        for rate, shadow in self.shadows.items():
            tensors = list(shadow.values())
            sources = [params[k].float() for k in shadow]
            torch._foreach_lerp_(tensors, sources, 1.0 - self.decay(rate, updates_before))

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {self.set_name(r): s for r, s in self.shadows.items()}

    def load(self, sets: dict[str, dict[str, torch.Tensor]]) -> None:
        for r in self.rates:
            name = self.set_name(r)
            if name not in sets:
                raise KeyError(name)
            for k, v in sets[name].items():
                self.shadows[r][k].copy_(v)
