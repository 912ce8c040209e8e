"""Which of the trained timesteps a shorter sampling process keeps.

The syntax is the original's: ``"100"`` keeps 100 steps spread evenly; ``"10,15,20"``
splits the process into three equal sections keeping 10, 15 and 20 steps in each;
``"ddim25"`` keeps every k-th step for the k that yields exactly 25 steps (DDIM's
spacing). An empty spec keeps every step.
"""

from __future__ import annotations

from rcdm_cli.errors import UsageError


def space_timesteps(num_timesteps: int, spec: str | int | None) -> list[int]:
    """The sorted original timestep indices that the respaced process keeps."""
    if spec is None or spec == "":
        return list(range(num_timesteps))
    if isinstance(spec, int):
        spec = str(spec)
    spec = spec.strip()
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
