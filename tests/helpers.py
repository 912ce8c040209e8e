"""Plain helpers the tests import (conftest.py holds the fixtures): the repository's
root, running the command line, comparing tensors, and tiny model weights."""

from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def rcdm(capsys, *args):
    """``rcdm ARGS...`` run in-process: its exit code, stdout and stderr."""
    from rcdm_cli.cli.app import run

    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def subfolder(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_tiny_state(rep_dim: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of the `tiny` preset with every parameter random (a zero-initialised
    output layer would make every model look alike)."""
    from rcdm_cli.diffusion import PRESETS, UNet

    gen = torch.Generator().manual_seed(seed)
    model = UNet(PRESETS["tiny"].unet.with_rep_dim(rep_dim))
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}
