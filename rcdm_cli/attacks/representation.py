"""Attacking the representation itself: projected gradient ascent on the distance
between the perturbed image's representation and the clean one, inside an L-inf or
L2 ball. No classifier and no labels are involved."""

from __future__ import annotations

from typing import Callable

import torch

from rcdm_cli.errors import UsageError


def representation_pgd(
    represent: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adversarial images in [0, 1] maximising ||f(x') - f(x)||^2 with ||x' - x|| <= eps.

    The random start is ``noise`` (uniform in [-1, 1], one row per image, so a caller
    can key each image's start by the image and not by its batch) or drawn from
    ``generator``."""
    if norm not in ("Linf", "L2"):
        raise UsageError(f"--norm must be Linf or L2, got {norm!r}")
    if eps <= 0 or alpha <= 0 or steps <= 0:
        raise UsageError("--eps, --alpha and --attack-steps must be positive")
    with torch.no_grad():
        target = represent(images).detach()
    if noise is None:
        noise = torch.rand(images.shape, generator=generator) * 2 - 1
    noise = noise.to(images)
    delta = noise * eps if norm == "Linf" else _project_l2(noise, eps * 0.5)
    x = (images + delta).clamp(0, 1).detach()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = (represent(x) - target).square().sum()
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            if norm == "Linf":
                x = x + alpha * grad.sign()
                x = images + (x - images).clamp(-eps, eps)
            else:
                g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                x = images + _project_l2(x + alpha * g - images, eps)
            x = x.clamp(0, 1).detach()
    return x


def _project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return delta * torch.clamp(eps / norms, max=1.0)
