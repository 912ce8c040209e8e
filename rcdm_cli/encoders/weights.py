"""Getting published encoder weights from a file into a module, exactly.

Public helpers for plugins (built-in or third-party):

- :func:`encoder_cache_dir` / :func:`fetch_weights`: the download cache. With
  ``RCDM_HOME`` set, files go to ``$RCDM_HOME/encoders``; otherwise they follow torch
  hub's convention (``$TORCH_HOME/hub/checkpoints``), so a file torch hub already
  downloaded (say torchvision's ResNet-50) is found and not fetched twice.
- :func:`load_torch_file`: ``torch.load(weights_only=True)`` with a short, explicit
  allow-list of harmless non-tensor objects that published checkpoints contain
  (``argparse.Namespace`` training arguments, numpy scalars in optimizer state).
- :func:`load_numpy_pickle`: a restricted unpickler for plain pickles of numpy arrays
  (such as JAX/Haiku releases) that admits arrays and containers, never arbitrary
  classes.
- :func:`subtree`, :func:`strip_prefix`, :func:`rename_keys`: key remapping.
- :func:`load_strict`: load a state dict, refusing any missing, unexpected or
  mis-shaped key with a message that names it.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from rcdm_cli.checkpoint.download import Progress, download, rcdm_home
from rcdm_cli.encoders.spec import WeightSource
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.statedict import expected_shapes, state_dict_problems


def encoder_cache_dir() -> Path:
    if os.environ.get("RCDM_HOME"):
        return rcdm_home() / "encoders"
    return Path(torch.hub.get_dir()) / "checkpoints"


def fetch_weights(source: WeightSource, progress: Progress | None = None) -> Path:
    """The local path of a published weight file, downloading it on first use."""
    if not source.url:
        raise UsageError(f"weights {source.name!r} have no download address; pass a local file with --weights")
    dest = encoder_cache_dir() / source.file_name
    return download(source.url, dest, sha256=source.sha256, sha256_prefix=source.sha256_prefix, progress=progress)


try:  # numpy >= 2 moved its internals; pickles name either location
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


def _numpy_globals() -> list[Any]:
    """numpy objects that appear in published checkpoints (arrays, scalars in
    optimizer state, dtypes), under both the numpy 1 and numpy 2 module names."""
    allowed: list[Any] = [np.dtype, np.ndarray]
    for name in ("_reconstruct", "scalar"):
        for module in _NUMPY_MODULES:
            allowed.append((getattr(_multiarray, name), f"{module}.{name}"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


SAFE_GLOBALS: list[Any] = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, *_numpy_globals()]


def load_torch_file(path: str | Path, extra_safe_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(weights_only=True)`` admitting only :data:`SAFE_GLOBALS` and
    ``extra_safe_globals`` besides tensors and containers."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such weights file: {path}")
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals([*SAFE_GLOBALS, *extra_safe_globals]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), "")
        raise RcdmError(
            f"refused to load {path}: it contains pickled objects that are not plain data "
            f"and could run code{f' ({detail})' if detail else ''}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise RcdmError(f"{path} is truncated or corrupt: {first}") from None


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays, numpy scalars and dtypes, and plain containers only."""

    def find_class(self, module: str, name: str):
        if module in _NUMPY_MODULES and name in ("_reconstruct", "scalar"):
            return getattr(_multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array or a plain container")


def load_numpy_pickle(path: str | Path) -> Any:
    """A pickle of numpy arrays in dicts/lists/tuples, read without running any code."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such weights file: {path}")
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise RcdmError(f"refused to load {path}: {exc}") from None
    except (EOFError, ValueError, OSError) as exc:
        raise RcdmError(f"{path} is truncated or corrupt: {exc}") from None


def subtree(obj: Any, *keys: str, source: str = "the checkpoint") -> Any:
    """``obj[k1][k2]...`` with an error naming the first key that is missing."""
    path = []
    for key in keys:
        path.append(key)
        if not isinstance(obj, Mapping) or key not in obj:
            found = ", ".join(sorted(map(str, obj))[:8]) if isinstance(obj, Mapping) else type(obj).__name__
            raise RcdmError(f"{source} has no {'/'.join(path)} (found: {found}): not the expected published layout")
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


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``module``; any difference in keys or shapes is an error."""
    problems = state_dict_problems(expected_shapes(module), state)
    if problems:
        raise RcdmError(f"{source} does not match the expected layout: " + ", ".join(problems))
    module.load_state_dict(dict(state), strict=True)
    return module


def convert_arrays(tree: Mapping[str, Any], fn: Callable[[np.ndarray], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Flatten a nested mapping of numpy arrays into ``{"a/b/c": tensor}``."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(node, np.ndarray) or np.isscalar(node):
            arr = np.asarray(node)
            out[prefix] = fn(arr) if fn else torch.from_numpy(np.ascontiguousarray(arr))

    walk("", tree)
    return out
