"""Where output goes: results (``--json``) on stdout, everything for humans on stderr.

Colour and progress bars appear only when stderr is a terminal; ``NO_COLOR`` is
honoured. ``--quiet`` leaves only errors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

err = Console(stderr=True)
log = logging.getLogger("rcdm")


@dataclass
class Settings:
    device: str | None = None
    debug: bool = False
    quiet: bool = False


settings = Settings()


def setup_logging(debug: bool, quiet: bool) -> None:
    """Rich, coloured lines on a terminal; plain ``rcdm: message`` lines in batch logs."""
    level = logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO
    handler: logging.Handler
    if err.is_terminal:
        handler = RichHandler(console=err, show_time=False, show_path=False, markup=False, rich_tracebacks=debug)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("rcdm: %(message)s"))
    root = logging.getLogger("rcdm")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Libraries' Python warnings (torch's advice on legacy pickles, DataLoader notes)
    # are paragraphs meant for developers: shown with --debug, silent otherwise, so
    # that stderr holds rcdm's own lines. rcdm itself warns through logging.
    logging.captureWarnings(True)
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.handlers[:] = [handler] if debug else [logging.NullHandler()]
    py_warnings.propagate = False


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


class StepProgress:
    """A progress bar on a terminal; otherwise a log line at most every ``interval``
    seconds and one at the end (batch-job logs); nothing when quiet."""

    def __init__(self, description: str, total: int, interval: float = 15.0):
        self.description = description
        self.total = total
        self.done = 0
        self.interval = interval
        self._last_log = time.monotonic()
        self._bar: Progress | None = None
        self._task = None

    def __enter__(self) -> "StepProgress":
        if not settings.quiet and err.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def update(self, done: int, description: str | None = None) -> None:
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, description=description or self.description)
        elif not settings.quiet:
            now = time.monotonic()
            if now - self._last_log >= self.interval or done >= self.total:
                self._last_log = now
                log.info("%s (%d/%d)", description or self.description, done, self.total)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


@contextmanager
def status(message: str) -> Iterator[None]:
    if settings.quiet or not err.is_terminal:
        if not settings.quiet:
            log.info(message)
        yield
    else:
        with err.status(message):
            yield
