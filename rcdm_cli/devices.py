"""Choosing the torch device from ``--device`` / ``RCDM_DEVICE``."""

from __future__ import annotations

import os

import torch

from rcdm_cli.errors import UsageError


def resolve_device(name: str | None = None) -> torch.device:
    """``auto`` (the default) picks CUDA, then Apple's MPS, then the CPU."""
    name = (name or os.environ.get("RCDM_DEVICE") or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device
