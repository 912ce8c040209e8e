"""Comparing a state dict with what a module expects, naming every difference.

Published checkpoints are loaded strictly: a missing or unexpected key, or a shape
mismatch, must be an error that says which key, never a silently random layer.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def state_dict_problems(
    expected: Mapping[str, Sequence[int]], state: Mapping[str, torch.Tensor], shown: int = 3
) -> list[str]:
    """Human-readable differences between expected shapes and a state dict."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} is {fmt_shape(state[k].shape)}, expected {fmt_shape(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", mismatched)):
        if items:
            listed = "; ".join(items[:shown]) + (f"; and {len(items) - shown} more" if len(items) > shown else "")
            problems.append(f"{len(items)} {label} ({listed})")
    return problems


def expected_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
