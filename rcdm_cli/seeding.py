"""Seeds for rcdm's random streams: every stream (a sample's noise, a training step's
timesteps, an augmentation's parameters) is keyed by what it is for, so that results
do not depend on batch sizes, worker or process counts, or the device."""

from __future__ import annotations

import numpy as np


def stream_seed(*parts: int) -> int:
    """A 64-bit seed mixed from non-negative integers, so nearby inputs give unrelated
    streams (every random stream of rcdm is keyed this way)."""
    state = np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])
