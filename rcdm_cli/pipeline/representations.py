"""Ways of choosing representations: paths between two of them, arithmetic over
several, and the paper's attribute transfer. Pure tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rcdm_cli.errors import UsageError

MAX_FRAMES = 10_000  # points on an interpolation path; a strip of more is not looked at


def interpolation_weights(frames: int) -> torch.Tensor:
    """``frames`` positions from 0 (the first input) to 1 (the second), both included."""
    if frames < 2:
        raise UsageError(f"--frames must be at least 2 (the two ends), got {frames}")
    if frames > MAX_FRAMES:
        raise UsageError(f"--frames must be at most {MAX_FRAMES:,} (a strip of more is not looked at), got {frames:,}")
    return torch.linspace(0.0, 1.0, frames, dtype=torch.float64)


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Straight-line interpolation, one row per position in ``t``."""
    a64, b64 = a.double(), b.double()
    return ((1 - t)[:, None] * a64 + t[:, None] * b64).to(a.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: along the great circle between the directions of ``a``
    and ``b``, with the norm interpolated linearly, so that intermediate vectors keep
    a typical length instead of shrinking towards the middle as ``lerp``'s do."""
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(), b64.norm()
    if na == 0 or nb == 0:
        return lerp(a, b, t)
    ua, ub = a64 / na, b64 / nb
    omega = torch.arccos(torch.clamp((ua * ub).sum(), -1.0, 1.0))
    if omega.abs() < 1e-7:  # (nearly) the same direction
        return lerp(a, b, t)
    so = torch.sin(omega)
    direction = (torch.sin((1 - t) * omega) / so)[:, None] * ua + (torch.sin(t * omega) / so)[:, None] * ub
    norm = (1 - t) * na + t * nb
    return (direction * norm[:, None]).to(a.dtype)


INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}


def interpolate(a: torch.Tensor, b: torch.Tensor, frames: int, mode: str = "lerp") -> torch.Tensor:
    if mode not in INTERPOLATIONS:
        raise UsageError(f"unknown interpolation mode {mode!r}; choose lerp or slerp")
    return INTERPOLATIONS[mode](a, b, interpolation_weights(frames))


def rescale_to(vector: torch.Tensor, operands: torch.Tensor) -> torch.Tensor:
    """Give ``vector`` the mean norm of the operand vectors (rows of ``operands``)."""
    target = operands.norm(dim=1).mean()
    norm = vector.norm()
    if norm == 0:
        raise UsageError("the expression's result is the zero vector: it cannot be rescaled")
    return vector * (target / norm)


def shared_dimensions(
    query: torch.Tensor, bank: torch.Tensor, k: int = 20, min_count: int = 14
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of ``bank`` to ``query`` (cosine similarity) and the
    mask of dimensions that are active (non-zero) in more than ``min_count`` of them:
    what those neighbours have in common. Returns (neighbour indices, mask)."""
    if bank.ndim != 2 or bank.shape[1] != query.shape[-1]:
        raise ValueError("bank must be (N, dim) with the query's dim")
    if not 0 < k <= bank.shape[0]:
        raise UsageError(f"cannot take {k} nearest neighbours among {bank.shape[0]} images")
    if not 0 <= min_count < k:
        raise UsageError(f"--n-common must be between 0 and k - 1 = {k - 1}, got {min_count}")
    sims = F.normalize(bank.double(), dim=1) @ F.normalize(query.double().flatten(), dim=0)
    neighbours = sims.topk(k).indices
    counts = (bank[neighbours] != 0).sum(dim=0)
    return neighbours, counts > min_count


def transfer_attributes(source: torch.Tensor, target: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """``source`` with its shared dimensions (what it has in common with its
    neighbours) taken from ``target``: the target's content with the source's own
    attributes."""
    out = source.clone()
    out[..., shared] = target[..., shared]
    return out


def remove_shared(source: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    out = source.clone()
    out[..., shared] = 0
    return out
