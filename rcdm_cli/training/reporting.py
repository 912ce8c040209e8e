"""What a training run tells its caller, and what it returns.

The library prints nothing: the CLI (and the demo) render these calls as log lines
and progress bars, so the trainer needs neither rich nor typer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Reporter:
    """What the loop tells its caller; the CLI renders it. All methods are optional.
    Under torchrun only rank 0 reports."""

    def event(self, message: str) -> None: ...

    def step(self, step: int, total: int, loss: float, images_per_second: float) -> None:
        """``loss`` is the mean over the steps of the current --log-every window so far."""

    def log(self, record: dict[str, Any]) -> None: ...

    def warning(self, message: str) -> None:
        """Something the user should act on (a model that ignores its conditioning)."""
        self.event(message)

    def progress(self, task: str, done: int, total: int) -> None:
        """Work outside the steps (encoding images for the feature cache, sampling the
        previews): done of total, ``task`` saying what it is."""


@dataclass
class TrainSummary:
    run_dir: str
    step: int
    stopped_by_signal: bool
    stopped_before_training: bool
    unreadable_at_scan: int  # files whose header could not be read: left out of the run
    unreadable_in_training: int  # distinct files that failed to decode later: replaced
    last_checkpoint: str | None
    seconds: float
    # the mean training loss over the run's last steps (a --log-every window, or fewer
    # at the end of a stopped run), and how many steps that mean covers
    final_loss: float | None = None
    final_loss_steps: int = 0
