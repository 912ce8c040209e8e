"""What the FAIR self-supervised training scripts (VICReg, Barlow Twins) pickled in
their full checkpoints besides tensors."""

from __future__ import annotations

from typing import Any


def _training_filter(*_args: Any) -> bool:
    """Stands for the training script's ``exclude_bias_and_norm``, which the LARS
    param groups pickle by reference; an encoder never optimizes."""
    return False


# The training script ran as __main__ (or as __mp_main__ in spawned workers).
TRAINING_SCRIPT_GLOBALS = tuple(
    (_training_filter, f"{module}.exclude_bias_and_norm") for module in ("__main__", "__mp_main__")
)
