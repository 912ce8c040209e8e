"""Which of the trained timesteps a shorter sampling process keeps.

The syntax is the original's: ``"100"`` keeps 100 steps spread evenly; ``"10,15,20"``
splits the process into three equal sections keeping 10, 15 and 20 steps in each;
``"ddim25"`` keeps every k-th step for the k that yields exactly 25 steps (DDIM's
spacing). An empty spec keeps every step.

Two spacings beyond the original's put more of a few steps where the image is
decided, near t = 0, where evenly spaced steps leave the last one several times
longer in log-SNR than the rest: ``"quad15"`` spaces 15 steps evenly in the square
root of t (DDIM's "quadratic" spacing), and ``"logsnr15"`` evenly in the half log
signal-to-noise ratio of the process's own noise schedule (DPM-Solver's choice).
"""

from __future__ import annotations

import math
from typing import Sequence

from rcdm_cli.errors import UsageError


def space_timesteps(num_timesteps: int, spec: str | int | None, alphas_cumprod: Sequence[float] | None = None) -> list[int]:
    """The sorted original timestep indices that the respaced process keeps.
    ``alphas_cumprod`` (the process's noise levels) is needed by ``logsnrN`` only;
    without it such a spec is checked but spaced as if the schedule were linear."""
    if spec is None or spec == "":
        return list(range(num_timesteps))
    if isinstance(spec, int):
        spec = str(spec)
    spec = spec.strip()
    for prefix in ("quad", "logsnr"):
        if spec.startswith(prefix):
            try:
                wanted = int(spec[len(prefix):])
            except ValueError:
                raise UsageError(f"bad step spec {spec!r}: expected {prefix}N, e.g. {prefix}15") from None
            if not 2 <= wanted <= num_timesteps:
                raise UsageError(f"bad step spec {spec!r}: the count must be between 2 and {num_timesteps}")
            if prefix == "quad":
                positions = [(i / (wanted - 1)) ** 2 * (num_timesteps - 1) for i in range(wanted)]
            else:
                positions = _logsnr_positions(num_timesteps, wanted, alphas_cumprod)
            return _distinct(positions, num_timesteps)
    if spec.startswith("ddim"):
        try:
            wanted = int(spec[len("ddim"):])
        except ValueError:
            raise UsageError(f"bad step spec {spec!r}: expected ddimN, e.g. ddim25") from None
        for stride in range(1, num_timesteps):
            kept = range(0, num_timesteps, stride)
            if len(kept) == wanted:
                return list(kept)
        raise UsageError(
            f"bad step spec {spec!r}: no stride gives exactly {wanted} of {num_timesteps} steps"
        )
    try:
        counts = [int(part) for part in spec.split(",")]
    except ValueError:
        raise UsageError(
            f"bad step spec {spec!r}: expected a count (100), section counts (10,15,20) or ddimN"
        ) from None
    if any(c <= 0 for c in counts):
        raise UsageError(f"bad step spec {spec!r}: step counts must be positive")
    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise UsageError(
                f"bad step spec {spec!r}: cannot take {count} steps from a section of {size}"
            )
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def _logsnr_positions(num_timesteps: int, wanted: int, alphas_cumprod: Sequence[float] | None) -> list[float]:
    """Fractional timesteps evenly spaced in half log-SNR, from the noisiest step to
    the cleanest, interpolating the schedule between integer timesteps."""
    if alphas_cumprod is None:
        from rcdm_cli.diffusion.schedules import named_betas

        alphas_cumprod, level = [], 1.0
        for beta in named_betas("linear", num_timesteps):
            level *= 1.0 - float(beta)
            alphas_cumprod.append(level)
    lam = [0.5 * (math.log(a) - math.log1p(-a)) for a in alphas_cumprod]  # decreasing in t
    targets = [lam[-1] + (lam[0] - lam[-1]) * i / (wanted - 1) for i in range(wanted)]
    positions, t = [], num_timesteps - 1
    for target in targets:
        while t > 0 and lam[t - 1] <= target:
            t -= 1
        if t == 0 or lam[t] >= target:
            positions.append(float(t))
        else:  # lam[t] < target < lam[t - 1]
            positions.append(t - (target - lam[t]) / (lam[t - 1] - lam[t]))
    return positions


def _distinct(positions: Sequence[float], num_timesteps: int) -> list[int]:
    """Round fractional timesteps to distinct integers in [0, T), keeping both ends:
    where the spacing is finer than one step, the steps are pushed apart by one."""
    kept = sorted(min(num_timesteps - 1, max(0, round(p))) for p in positions)
    kept[0] = 0
    for i in range(1, len(kept)):
        kept[i] = max(kept[i], kept[i - 1] + 1)
    overflow = kept[-1] - (num_timesteps - 1)
    if overflow > 0:  # pushed past the end: pull the tail back down
        for i in range(len(kept) - 1, 0, -1):
            kept[i] = min(kept[i], num_timesteps - 1 - (len(kept) - 1 - i))
    kept[-1] = num_timesteps - 1
    return kept
