"""Representation files (``rcdm encode``): one row per image, and, in a
.safetensors file, a record of what computed them. ``rcdm sample --rep`` reads that
record (:func:`rcdm_cli.tensorfile.provenance`) to refuse vectors of another
representation than the model's, so it names everything that changes a vector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch

from rcdm_cli import __version__
from rcdm_cli.checkpoint.hashing import file_sha256
from rcdm_cli.encoders import Encoder
from rcdm_cli.errors import UsageError
from rcdm_cli.fileio import atomic_path
from rcdm_cli.inputs import load_image
from rcdm_cli.tensorfile import save_tensors

SUFFIXES = (".safetensors", ".npy")
Item = TypeVar("Item")


def check_output(output: Path) -> None:
    if output.suffix not in SUFFIXES:
        raise UsageError(f"--output must end in .safetensors or .npy, got {output.name}")


def encode_in_batches(
    encode: Callable[[Sequence[Item]], torch.Tensor],
    items: Sequence[Item],
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``encode`` over ``items`` ``batch_size`` at a time, the rows on the CPU;
    ``progress(done, total)`` after each batch. Only one batch of inputs needs to be
    in memory when ``encode`` reads them itself (paths)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    rows = []
    for start in range(0, len(items), batch_size):
        rows.append(encode(items[start : start + batch_size]).cpu())
        if progress is not None:
            progress(min(start + batch_size, len(items)), len(items))
    return torch.cat(rows)


def encode_paths(
    encoder: Encoder,
    layer: str,
    paths: Sequence[Path],
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(N, dim) representations of the images at ``paths``, each decoded as its batch is encoded."""
    def encode(batch: Sequence[Path]) -> torch.Tensor:
        return encoder.encode([load_image(p) for p in batch], layer)

    return encode_in_batches(encode, paths, batch_size, progress)


def representation_info(
    encoder: Encoder, layer: str, paths: Sequence[Path], weights: Path | None = None, checkpoint: str | None = None
) -> dict:
    """What computed the vectors: a local weights file by its hash, since a path says
    nothing about what the file held when the vectors were made."""
    local = weights is not None and encoder.weights_file
    return {
        "encoder": encoder.name,
        "layer": layer,
        "weights": encoder.weights_id,
        "weights_file": encoder.weights_file,
        "weights_sha256": file_sha256(Path(encoder.weights_file)) if local else None,
        "preprocessing": encoder.preprocessing.to_dict(),
        "checkpoint": checkpoint,
        "images": [str(p) for p in paths],
        "rcdm_version": __version__,
    }


def write_representations(output: Path, reps: torch.Tensor, info: dict) -> None:
    """The vectors at ``output``, written whole or not at all; a .npy file has no room
    for the record."""
    check_output(output)
    if output.suffix == ".npy":
        with atomic_path(output) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, reps.numpy())
    else:
        save_tensors(output, {"reps": reps}, {"rcdm": json.dumps(info)})
