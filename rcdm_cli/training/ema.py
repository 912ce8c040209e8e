"""Exponential moving averages of the weights, one copy per rate."""

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

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = {k: v.detach() for k, v in model.state_dict().items()}
        for rate, shadow in self.shadows.items():
            tensors = list(shadow.values())
            sources = [params[k].float() for k in shadow]
            torch._foreach_lerp_(tensors, sources, 1.0 - rate)

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {self.set_name(r): s for r, s in self.shadows.items()}

    def load(self, sets: dict[str, dict[str, torch.Tensor]]) -> None:
        for r in self.rates:
            name = self.set_name(r)
            if name not in sets:
                raise KeyError(name)
            for k, v in sets[name].items():
                self.shadows[r][k].copy_(v)
