"""The stop signals of batch schedulers, caught for the length of a run.

A run asked to stop during setup stops without saving (there is nothing new to
save); during training it saves and stops (see ``Trainer.run``).
"""

from __future__ import annotations

import signal
from typing import Any


class StopSignals:
    """SIGTERM and SIGUSR1 (what batch schedulers send before preemption) ask the run
    to stop (and to save, once training has started); the handlers are restored
    afterwards. A fresh instance that was never entered catches nothing."""

    SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
