"""Progress of the evaluations' long phases, drawn with the console's bars: the
library reports ``(done, total)`` through callbacks and knows nothing of them."""

from __future__ import annotations

from typing import Callable, Sequence

from rcdm_cli.cli.console import StepProgress, status


def counting(bar: StepProgress) -> Callable[[int, int], None]:
    """A library's ``progress(done, total)`` drawn on ``bar``."""
    return lambda done, total: bar.update(done)


def encoding_with_progress(run, batch_size: int) -> Callable[[Sequence, str], object]:
    """The ``encode(images, what)`` of :func:`rcdm_cli.evaluation.faithfulness.measure_faithfulness`:
    the run's encoder loaded (and downloaded) once, before the first bar, then a batch
    at a time under a bar."""
    from rcdm_cli.evaluation.representations import encode_in_batches

    name = f"{run.plan.encoder}/{run.plan.layer}"
    loaded = []

    def encode(images: Sequence, what: str):
        if not loaded:
            with status(f"loading the encoder {name}"):
                run.encoder  # noqa: B018 - built here, not under the bar
            loaded.append(True)
        with StepProgress(f"encoding {len(images)} {what} with {name}", len(images)) as bar:
            return encode_in_batches(lambda batch: run.encode(batch, batch_size), images, batch_size, counting(bar))

    return encode


class FolderProgress:
    """A progress bar per folder being copied, opened when the first image of a folder
    is done (the total is known only then) and closed before the next display."""

    def __init__(self, description: str):
        self.description = description
        self.bar = None

    def __enter__(self) -> "FolderProgress":
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None or done == 1:
            self.__exit__(None, None, None)
            self.bar = StepProgress(self.description, total).__enter__()
        self.bar.update(done)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
            self.bar = None
