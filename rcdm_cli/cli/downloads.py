"""Rendering download progress (bytes) on stderr."""

from __future__ import annotations

from rich.errors import LiveError
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from rcdm_cli.cli.console import err, log, settings


def download_progress():
    """A callback for :func:`rcdm_cli.download_cache.download`: a bar on a
    terminal, a log line per 10% otherwise."""
    state: dict = {"bar": None, "task": None, "next": 0.1, "started": False}

    def update(done: int, total: int | None) -> None:
        if settings.quiet:
            return
        if not state["started"]:
            state["started"] = True
            log.info("%s to fetch", f"{total / 1e6:.0f} MB" if total else "an unknown size")
            if err.is_terminal:
                bar = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err, transient=True)
                try:
                    bar.__enter__()
                except LiveError:  # rich < 14 allows one live display, and a spinner shows: log lines instead
                    bar = None
                if bar is not None:
                    state["bar"] = bar
                    state["task"] = bar.add_task("download", total=total)
        if state["bar"] is not None:
            state["bar"].update(state["task"], completed=done)
            if total is not None and done >= total:
                state["bar"].__exit__(None, None, None)
                state["bar"] = None
        elif total and done / total >= state["next"]:
            log.info("downloaded %d%%", int(100 * done / total))
            while done / total >= state["next"]:
                state["next"] += 0.1

    return update
