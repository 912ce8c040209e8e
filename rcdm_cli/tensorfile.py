"""Reading arrays that users bring: representation vectors and initial noise, from
``.safetensors``, ``.npy`` or ``.pt`` files; and the one refusal of a torch file
whose pickle could run code, for every reader of torch files."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.fileio import atomic_path

SUFFIXES = (".safetensors", ".npy", ".pt", ".pth")

# torch's two ways of saying a pickle names an object outside the allow-list (a module
# it blocks outright, such as os or subprocess, or any other global)
_DISALLOWED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|Trying to load unsupported GLOBAL) (\S+)")


def pickle_refusal(path: str | Path, exc: BaseException) -> RcdmError | None:
    """The error for a torch file refused because unpickling it could run code, or
    None when ``exc`` is not such a refusal (a damaged file). Torch's own message
    suggests ``weights_only=False``, the unsafe way; this one never does."""
    found = _DISALLOWED_GLOBAL.search(str(exc))
    if found is None:
        return None
    return RcdmError(
        f"refused to load {path}: it pickles {found.group(1)}, an object that is not plain data and could run "
        "code when loaded; save tensors alone (safetensors, or torch.save of tensors and plain containers)"
    )


def _pick(tensors: dict[str, torch.Tensor], path: Path, preferred: tuple[str, ...]) -> torch.Tensor:
    for key in preferred:
        if key in tensors:
            return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if not tensors:
        raise UsageError(f"{path} holds no tensors")
    raise UsageError(
        f"{path} holds several tensors ({', '.join(sorted(tensors))}); name one of them "
        f"{' or '.join(repr(k) for k in preferred)}"
    )


def load_tensor(path: str | Path, preferred: tuple[str, ...] = ()) -> torch.Tensor:
    """One float tensor from a file; several tensors in a file are told apart by name."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            tensor = _pick(load_file(str(path)), path, preferred)
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.dtype.kind not in "fiub":
                raise UsageError(f"{path} holds {array.dtype} values (text?), expected numbers")
            tensor = torch.from_numpy(array)
        elif suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = _pick({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, path, preferred)
            if not isinstance(obj, torch.Tensor):
                raise UsageError(f"{path} does not hold a tensor")
            tensor = obj
        else:
            raise UsageError(f"{path}: unsupported file type {suffix!r}; use {', '.join(SUFFIXES)}")
    except (SafetensorError, pickle.UnpicklingError, ValueError, RuntimeError, EOFError, OSError) as exc:
        if isinstance(exc, UsageError):
            raise
        refused = pickle_refusal(path, exc)
        if refused is not None:
            raise refused from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RcdmError(f"could not read {path}: {first}") from None
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise UsageError(f"{path} holds {tensor.dtype} values, expected numbers")
    if tensor.numel() == 0:
        raise UsageError(f"{path} holds no values (shape {tuple(tensor.shape)})")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise UsageError(f"{path} holds NaN or infinite values")
    return tensor


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def provenance(path: str | Path) -> dict | None:
    """What computed a vectors file, as ``rcdm encode`` records it in a .safetensors
    file's metadata; None for other files or a file without the record."""
    import json

    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            record = (f.metadata() or {}).get("rcdm")
        info = json.loads(record) if record else None
    except (SafetensorError, OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "encoder" in info and "layer" in info else None
