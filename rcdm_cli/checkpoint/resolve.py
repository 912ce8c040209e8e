"""From what a user types after ``--checkpoint`` to weights and metadata.

- ``released:NAME``: one of the paper's nine checkpoints, downloaded into the cache
  on first use;
- ``init:PRESET``: an untrained, randomly initialised model of a preset (smoke tests,
  benchmarks, training from scratch);
- a path to an rcdm ``.safetensors`` checkpoint;
- a training run folder (``rcdm train --out``): its newest complete checkpoint, with
  the EMA weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.checkpoint.official import check_state_dict, load_official_state_dict
from rcdm_cli.checkpoint.released import get_released
from rcdm_cli.checkpoint.rundir import RunDir
from rcdm_cli.checkpoint.store import load_checkpoint, read_meta
from rcdm_cli.diffusion.config import get_preset
from rcdm_cli.download_cache import Progress, cache_path, download
from rcdm_cli.errors import RcdmError, UsageError

# The width of a ResNet-50 trunk, the most common representation; used by `init:`
# models when nothing else says which width to expect.
DEFAULT_INIT_REP_DIM = 2048


@dataclass
class ResolvedCheckpoint:
    """A checkpoint whose metadata is known; the weights are read (and, for released
    checkpoints, downloaded) only by :meth:`load`, so that every option can be checked
    against the metadata before any slow work starts."""

    spec: str
    meta: CheckpointMeta
    path: Path | None
    _loader: Callable[[Progress | None], dict[str, torch.Tensor] | None] = field(repr=False)
    _state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _loaded: bool = field(default=False, repr=False)
    weight_set: str | None = None  # which stored set load() reads (None: no choice, as for init:)

    def load(self, progress: Progress | None = None) -> dict[str, torch.Tensor] | None:
        """The weights (None for an ``init:`` model), checked against the metadata."""
        if not self._loaded:
            self._state = self._loader(progress)
            self._loaded = True
        return self._state

    @property
    def state(self) -> dict[str, torch.Tensor] | None:
        return self.load()


def released_path(name: str) -> Path:
    return cache_path("checkpoints", get_released(name).filename)


def released_download(spec: str) -> tuple[str, Path] | None:
    """``(url, cache path)`` of the released checkpoint ``spec`` names
    (``released:NAME``); None for any other checkpoint (nothing to download)."""
    if not spec.startswith("released:"):
        return None
    name = spec[len("released:"):]
    return get_released(name).url, released_path(name)


def weight_set_name(meta: CheckpointMeta, wanted: str | None, source: str) -> str:
    """The stored set that ``wanted`` names: None, the checkpoint's default; ``ema``,
    its default moving average (a run's first --ema rate); ``model``, the raw
    weights; or a set's exact name (``ema-0.999``)."""
    if wanted is None:
        return meta.default_weights
    if wanted == "ema" and wanted not in meta.weight_sets:
        averages = [name for name in meta.weight_sets if name.startswith("ema")]
        if meta.default_weights in averages:
            return meta.default_weights
        if averages:
            return averages[0]
    if wanted not in meta.weight_sets:
        raise UsageError(f"{source} has no weight set {wanted!r}; it has: {', '.join(meta.weight_sets)}")
    return wanted


def resolve_checkpoint(spec: str, *, rep_dim: int | None = None, weights: str | None = None) -> ResolvedCheckpoint:
    """Find what ``spec`` names and read its metadata (cheap). ``rep_dim`` sizes an
    ``init:`` model's conditioning; ``weights`` names the weight set (see
    :func:`weight_set_name`)."""
    if spec.startswith("released:"):
        entry = get_released(spec[len("released:"):])
        meta = entry.meta()
        chosen = weight_set_name(meta, weights, spec)  # the released files hold their EMA weights only
        path = released_path(entry.name)

        def load_released(progress):
            download(entry.url, path, progress=progress)
            try:
                state = load_official_state_dict(path)
            except RcdmError as exc:
                raise RcdmError(f"{exc}; delete the cached copy to download {entry.url} again") from None
            check_state_dict(state, meta.unet, source=f"{path} ({spec})")
            return state

        return ResolvedCheckpoint(spec, meta, path, load_released, weight_set=chosen)

    if spec.startswith("init:"):
        preset = get_preset(spec[len("init:"):])
        meta = CheckpointMeta(
            unet=preset.unet.with_rep_dim(rep_dim or DEFAULT_INIT_REP_DIM),
            diffusion=preset.diffusion,
            source={"kind": "init", "preset": preset.name},
        )
        return ResolvedCheckpoint(spec, meta, None, lambda progress: None)

    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"no such checkpoint: {spec} (expected a file, released:NAME or init:PRESET)")
    if path.is_dir():
        if not RunDir.is_run_dir(path):
            raise UsageError(
                f"{path} is a folder but not a training run; expected a run folder, an rcdm checkpoint file, "
                "released:NAME or init:PRESET"
            )
        path = RunDir(path).latest_model()
    if path.suffix in (".pt", ".pth"):
        raise UsageError(
            f"{path} is not an rcdm checkpoint; if it holds official RCDM weights, import it with "
            f"`rcdm convert {path} --flags \"...\" -o model.safetensors`"
        )
    meta = read_meta(path)
    set_name = weight_set_name(meta, weights, str(path))

    def load_file(progress):
        _, state = load_checkpoint(path, weights=set_name)
        check_state_dict(state, meta.unet, source=str(path))
        return state

    return ResolvedCheckpoint(spec, meta, path, load_file, weight_set=set_name)
