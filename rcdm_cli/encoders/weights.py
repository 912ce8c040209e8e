"""Getting published encoder weights from a file into a module, exactly.

Public helpers for plugins (built-in or third-party):

- :func:`encoder_cache_dir` / :func:`fetch_weights`: the download cache. With
  ``RCDM_HOME`` set, files go to ``$RCDM_HOME/encoders``; otherwise they follow torch
  hub's convention (``$TORCH_HOME/hub/checkpoints``), so a file torch hub already
  downloaded (say torchvision's ResNet-50) is found and not fetched twice. A file whose
  source publishes a SHA-256 (or torch hub's file-name prefix of one) is checked after
  download and, once, when it is first found in the cache; the download cache's
  ``.verified.json`` record beside it keeps that check (rcdm_cli/download_cache.py).
- :func:`load_torch_file`: reads a weights file of either kind: safetensors (recognised
  by its header, whatever the file is called), or ``torch.load(weights_only=True)``
  with a short, explicit allow-list of harmless non-tensor objects that published
  checkpoints contain (``argparse.Namespace`` training arguments, numpy scalars in
  optimizer state).
- :func:`load_numpy_pickle`: a restricted unpickler for pickles of numpy arrays (such
  as JAX/Haiku releases) that admits arrays and plain containers, never arbitrary
  classes (see :mod:`rcdm_cli.encoders.numpy_pickle`).
- :func:`find_state_dict`, :func:`subtree`, :func:`strip_prefix`,
  :func:`drop_common_prefix`, :func:`rename_keys`: finding and renaming the weights.
- :func:`load_strict`: load a state dict, refusing any missing, unexpected or
  mis-shaped key with a message that names it.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn

from rcdm_cli.download_cache import Progress, download, rcdm_home
from rcdm_cli.encoders.numpy_pickle import NUMPY_MODULES, NumpyUnpickler, PickleRefused
from rcdm_cli.encoders.spec import WeightSource
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.statedict import expected_shapes, state_dict_problems
from rcdm_cli.tensorfile import pickle_refusal

log = logging.getLogger(__name__)

__all__ = [
    "SAFE_GLOBALS",
    "drop_common_prefix",
    "encoder_cache_dir",
    "fetch_weights",
    "find_state_dict",
    "is_safetensors",
    "is_state_dict",
    "load_numpy_pickle",
    "load_strict",
    "load_torch_file",
    "rename_keys",
    "strip_prefix",
    "subtree",
    "tensors_only",
]


# --- the download cache ------------------------------------------------------------------


def encoder_cache_dir() -> Path:
    if os.environ.get("RCDM_HOME"):
        return rcdm_home() / "encoders"
    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch_weights(source: WeightSource, progress: Progress | None = None) -> Path:
    """The local path of a published weight file, downloading it on first use. A
    cached copy is checked by :func:`rcdm_cli.download_cache.download`: against
    what was downloaded, and once against the published digest when there is one."""
    if not source.url:
        raise UsageError(f"weights {source.name!r} have no download address; pass a local file with --weights")
    dest = encoder_cache_dir() / source.file_name
    return download(source.url, dest, sha256=source.sha256, sha256_prefix=source.sha256_prefix, progress=progress)


# --- reading a weights file ----------------------------------------------------------------


def _numpy_globals() -> list[Any]:
    """numpy objects that appear in published checkpoints (arrays, scalars in
    optimizer state, dtypes), under both the numpy 1 and numpy 2 module names."""
    try:  # numpy >= 2 moved its internals; pickles name either location
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    allowed: list[Any] = [np.dtype, np.ndarray]
    for name in ("_reconstruct", "scalar"):
        for module in NUMPY_MODULES:
            allowed.append((getattr(multiarray, name), f"{module}.{name}"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


SAFE_GLOBALS: list[Any] = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, *_numpy_globals()]


def is_safetensors(path: str | Path) -> bool:
    """A safetensors file starts with the 8-byte length of a JSON header that follows."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def _in_cache(path: Path) -> bool:
    try:
        return path.absolute().is_relative_to(encoder_cache_dir().absolute())
    except OSError:
        return False


def _corrupt(path: Path, detail: str) -> RcdmError:
    if _in_cache(path):
        advice = f"it is a cached download: delete {path} and run again to download it afresh"
    else:
        advice = "check the file, or get it again"
    return RcdmError(f"{path} is truncated or corrupt ({detail}); {advice}")


def _first_line(exc: BaseException) -> str:
    """The part of an error worth one line: for torch's weights-only errors, what its
    unpickler said, not the advice around it."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    first = lines[0].split(". ")[0] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(str(path))
    except Exception as exc:  # the safetensors library raises its own error types
        raise _corrupt(path, f"unreadable safetensors: {_first_line(exc)}") from None


def _read_torch(path: Path, extra_safe_globals: Iterable[Any]) -> Any:
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals([*SAFE_GLOBALS, *extra_safe_globals]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        refused = pickle_refusal(path, exc)
        if refused is None:
            raise _corrupt(path, _first_line(exc)) from None
        raise refused from None
    except Exception as exc:  # a damaged file surfaces as almost any error inside torch.load
        raise _corrupt(path, _first_line(exc)) from None


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such weights file: {path}")
    if path.stat().st_size == 0:
        raise _corrupt(path, "the file is empty")
    return path


def load_numpy_pickle(path: str | Path, extra_globals: Mapping[tuple[str, str], Any] | None = None) -> Any:
    """A pickle of numpy arrays in plain containers (JAX, Haiku, ``dill`` releases), read
    with :class:`~rcdm_cli.encoders.numpy_pickle.NumpyUnpickler`: without running any
    code. Any other object is refused ("refused to load ..."); a damaged file is
    reported as truncated or corrupt."""
    path = _existing(path)
    try:
        with open(path, "rb") as f:
            return NumpyUnpickler(f, extra_globals).load()
    except PickleRefused as exc:
        raise RcdmError(f"refused to load {path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, LookupError) as exc:
        raise _corrupt(path, _first_line(exc)) from None


def load_torch_file(path: str | Path, extra_safe_globals: Iterable[Any] = ()) -> Any:
    """The contents of a weights file: a safetensors file's tensors, or what
    ``torch.load(weights_only=True)`` reads admitting only :data:`SAFE_GLOBALS` and
    ``extra_safe_globals`` besides tensors and containers.

    A file that names any other object is refused ("refused to load ..."); a file that
    cannot be read is reported as truncated or corrupt."""
    path = _existing(path)
    if is_safetensors(path):
        return _read_safetensors(path)
    return _read_torch(path, extra_safe_globals)


# --- finding and renaming the weights --------------------------------------------------------


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of names to tensors."""
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _found(obj: Any) -> str:
    """What a mapping holds, briefly: its first keys, and what a non-tensor is."""
    if not isinstance(obj, Mapping):
        return type(obj).__name__
    if not obj:
        return "an empty mapping"
    keys = sorted(obj, key=str)
    shown = ", ".join(
        str(k) if isinstance(obj[k], torch.Tensor) else f"{k} ({type(obj[k]).__name__})" for k in keys[:6]
    )
    return shown + (f", ... ({len(keys)} entries)" if len(keys) > 6 else "")


def find_state_dict(obj: Any, wrappers: Iterable[str], source: str, expected: str) -> dict[str, Any]:
    """The state dict in a checkpoint: ``obj`` itself when it is a mapping of tensors,
    otherwise what is under the first of ``wrappers`` it has (``"state_dict"``,
    ``"model"``), looked for again inside, so that a published training checkpoint
    and the plain state dict saved from it both load. ``expected`` describes the
    layout for the error when there is none."""
    wrappers = tuple(wrappers)
    seen = obj
    while not is_state_dict(seen):
        if not isinstance(seen, Mapping):
            raise RcdmError(f"{source} holds a {type(seen).__name__}, not {expected}")
        key = next((w for w in wrappers if isinstance(seen.get(w), Mapping)), None)
        if key is None:
            raise RcdmError(f"{source} is not {expected}: it holds {_found(seen)}")
        seen = seen[key]
    return dict(seen)


def subtree(obj: Any, *keys: str, source: str = "the checkpoint") -> Any:
    """``obj[k1][k2]...`` with an error naming the first key that is missing."""
    path = []
    for key in keys:
        path.append(key)
        if not isinstance(obj, Mapping) or key not in obj:
            raise RcdmError(f"{source} has no {'/'.join(path)} (found: {_found(obj)}): not the expected published layout")
        obj = obj[key]
    return obj


def strip_prefix(state: Mapping[str, Any], prefix: str, *, keep_others: bool = False) -> dict[str, Any]:
    """Keys starting with ``prefix``, without it (others dropped unless ``keep_others``)."""
    out = {}
    for k, v in state.items():
        if k.startswith(prefix):
            out[k[len(prefix):]] = v
        elif keep_others:
            out[k] = v
    return out


def drop_common_prefix(state: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """``state`` without ``prefix`` (DistributedDataParallel's ``module.``) when every
    key has it; unchanged otherwise, so that a partly prefixed file is still reported
    key by key."""
    if state and all(str(k).startswith(prefix) for k in state):
        return strip_prefix(state, prefix)
    return dict(state)


def rename_keys(state: Mapping[str, Any], rules: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Apply prefix substitutions ``(old, new)``, first match wins, to every key."""
    rules = list(rules)
    out = {}
    for k, v in state.items():
        for old, new in rules:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def tensors_only(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# --- loading ----------------------------------------------------------------------------------

_COUNTER = "num_batches_tracked"


def _with_batch_counters(module: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every missing batch-norm step counter set to 0. Files saved before
    PyTorch 0.4.1 (old torchvision-style releases) have none; the counter only matters
    for training with ``momentum=None``, and PyTorch's own loading tolerates its absence
    in those files the same way."""
    out = dict(state)
    for name, buffer in module.state_dict().items():
        if name.rpartition(".")[2] == _COUNTER and name not in out:
            out[name] = torch.zeros_like(buffer, device="cpu")
    return out


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``module``; any difference in keys or shapes is an error,
    except batch-norm step counters (``num_batches_tracked``) missing from old files."""
    state = _with_batch_counters(module, state)
    problems = state_dict_problems(expected_shapes(module), state)
    if problems:
        raise RcdmError(f"{source} does not match the expected layout: " + ", ".join(problems))
    module.load_state_dict(state, strict=True)
    return module
