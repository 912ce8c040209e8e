"""The images an evaluation runs on, given as ``rcdm sample`` takes them (files,
folders, globs, ``-`` for paths on stdin), cut to ``--max-images`` so that a quick
run over the first few of a large folder measures the same images each time."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from rcdm_cli.errors import UsageError
from rcdm_cli.inputs import expand_inputs


def evaluation_images(items: Iterable[str | Path], limit: int | None = None) -> list[Path]:
    paths = expand_inputs([str(item) for item in items])
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--max-images must be positive, got {limit}")
        paths = paths[:limit]
    return paths
