"""Whether a model follows its conditioning at all.

A model that ignores its representation (an EMA that still holds the initial
weights, a run stopped after a few steps, a projection that never learned) draws the
same image for every representation, and a user reading its samples would conclude
that the representation keeps nothing. This measures it on what the user sees:
samples of different representations drawn from the same noise, with rcdm's fast
sampler (eight network calls on a batch of at most eight), so every sampling command
can afford it.
"""

from __future__ import annotations

import torch

from rcdm_cli.diffusion.gaussian import randn
from rcdm_cli.diffusion.samplers import get_sampler
from rcdm_cli.pipeline.model import RCDMModel

# Below this mean difference (in 8-bit grey levels) between the samples of different
# representations drawn from the same noise, they differ by less than one level: the
# model ignores its conditioning. Trained models measure in the tens of levels
# (docs/commands/train.md).
IGNORED_BELOW_LEVELS = 1.0
PROBE_SAMPLER, PROBE_STEPS = "dpm++2m", "quad8"
MAX_PROBED = 8


@torch.no_grad()
def conditioning_effect(model: RCDMModel, reps: torch.Tensor, *, guidance: float = 1.0, seed: int = 0) -> float:
    """Mean absolute difference, in 8-bit grey levels, between samples that differ
    only in their representation. Up to eight distinct rows of ``reps`` are compared
    pairwise; a single representation is compared with its own values in reverse
    order (another vector of the same norm and values)."""
    rows = torch.unique(reps.float(), dim=0)[:MAX_PROBED]
    if rows.shape[0] < 2:
        rows = torch.cat([rows[:1], rows[:1].flip(-1)])
    count, size = rows.shape[0], model.image_size
    generators = [torch.Generator().manual_seed(seed) for _ in range(count)]  # the same noise for every row
    x_T = randn((count, 3, size, size), generators, model.device)
    samples = get_sampler(PROBE_SAMPLER)(
        model.denoiser(rows, guidance), model.diffusion(PROBE_STEPS), x_T, generator=generators, clip_denoised=True,
    ).float().cpu().clamp(-1, 1)
    pairs = [(a, b) for a in range(count) for b in range(a + 1, count)]
    change = torch.stack([(samples[a] - samples[b]).abs().mean() for a, b in pairs]).mean()
    return float(change) * 127.5


def ignores_conditioning(effect_levels: float) -> bool:
    return effect_levels < IGNORED_BELOW_LEVELS
