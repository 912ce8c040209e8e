"""Reading state dicts in the official RCDM / guided-diffusion layout.

The released checkpoints are ``torch.save``-d plain state dicts. They are opened with
``weights_only=True`` only: an untrusted pickle that would build arbitrary Python
objects (and so could run code) is refused before anything in it is executed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from rcdm_cli.diffusion.config import UNetConfig
from rcdm_cli.diffusion.unet import UNet
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.statedict import expected_shapes, fmt_shape, state_dict_problems
from rcdm_cli.tensorfile import pickle_refusal

_WRAPPER_KEYS = ("state_dict", "model", "ema", "module")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, or one nested under a single common wrapper key, and
    strip the ``module.`` prefix DistributedDataParallel adds."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, dict):
            inner = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)]
            if len(inner) == 1:
                obj = obj[inner[0]]
                continue
        raise RcdmError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load an official-layout state dict from a ``.pt``/``.pth`` or ``.safetensors`` file."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such file: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a checkpoint file")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                if "rcdm" in (f.metadata() or {}):
                    raise UsageError(f"{path} is already an rcdm checkpoint: use it directly with --checkpoint")
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise RcdmError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from None
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        try:
            with zipfile.ZipFile(path) as zf:
                zf.infolist()
        except zipfile.BadZipFile as exc:
            raise RcdmError(f"{path} is truncated or corrupt ({exc})") from None
    try:
        # Memory-mapping (zip-format files only) avoids reading 1.7 GB up front.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        refused = pickle_refusal(path, exc)
        if refused is not None:
            raise refused from None
        first = str(exc).strip().splitlines()
        raise RcdmError(f"{path} is truncated or corrupt: {first[0] if first else type(exc).__name__}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = msg.split(". ")[0].rstrip(".")  # torch appends paragraphs of advice
        raise RcdmError(f"{path} is truncated or corrupt: {msg}") from None
    return _unwrap(obj, path)


def infer_rep_dim(state: dict[str, torch.Tensor]) -> int | None:
    """The representation width the weights were trained on (None if unconditional)."""
    weight = state.get("ssl_emb.weight")
    return None if weight is None else int(weight.shape[1])


def check_state_dict(state: dict[str, torch.Tensor], config: UNetConfig, *, source: str = "the checkpoint") -> None:
    """Refuse weights that do not fit ``config`` exactly, naming what does not fit."""
    file_rep = infer_rep_dim(state)
    if config.rep_dim != file_rep:
        if file_rep is None:
            raise RcdmError(f"{source} has no ssl_emb layer: it is not a representation-conditional RCDM model")
        if config.rep_dim is None:
            raise RcdmError(f"{source} is conditioned on {file_rep}-d representations; the configuration is unconditional")
        raise RcdmError(
            f"{source} was trained on {file_rep}-d representations "
            f"(ssl_emb.weight is {fmt_shape(state['ssl_emb.weight'].shape)}), not {config.rep_dim}-d"
        )
    with torch.device("meta"):
        expected = expected_shapes(UNet(config))
    problems = state_dict_problems(expected, state)
    if problems:
        raise RcdmError(f"{source} does not fit the configuration: " + ", ".join(problems))
    for k, v in state.items():
        if not v.is_floating_point():
            raise RcdmError(f"{source}: {k} holds {v.dtype} values, expected floating point")
