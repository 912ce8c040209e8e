"""rcdm's checkpoint file: one ``.safetensors`` file holding every weight set
(``model``, ``ema-0.9999``, ...) under ``<set>/<official key>`` and the JSON metadata
in the safetensors header (``__metadata__["rcdm"]``).

Safetensors cannot run code when loaded and can be memory-mapped, so opening a
checkpoint to read its metadata costs almost nothing however large the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.fileio import atomic_path

SEPARATOR = "/"


def save_checkpoint(path: str | Path, weights: dict[str, dict[str, torch.Tensor]], meta: CheckpointMeta) -> None:
    """Write ``weights`` (weight-set name -> state dict) and ``meta`` atomically."""
    if set(weights) != set(meta.weight_sets):
        raise ValueError(f"weight sets {sorted(weights)} differ from the metadata's {list(meta.weight_sets)}")
    flat: dict[str, torch.Tensor] = {}
    for set_name, state in weights.items():
        if SEPARATOR in set_name:
            raise ValueError(f"weight-set name {set_name!r} must not contain {SEPARATOR!r}")
        for key, tensor in state.items():
            flat[f"{set_name}{SEPARATOR}{key}"] = tensor.detach().cpu().contiguous()
    header = {"rcdm": json.dumps(meta.to_dict(), sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=header)


def _open(path: Path):
    if not path.exists():
        raise UsageError(f"no such checkpoint: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not a checkpoint file")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise RcdmError(f"{path} is not a readable safetensors checkpoint (truncated or corrupt?): {exc}") from None


def read_meta(path: str | Path) -> CheckpointMeta:
    path = Path(path)
    with _open(path) as f:
        header = f.metadata() or {}
    if "rcdm" not in header:
        raise UsageError(
            f"{path} is a safetensors file without rcdm metadata; if it holds official RCDM weights, "
            "import it with `rcdm convert`"
        )
    try:
        data = json.loads(header["rcdm"])
    except json.JSONDecodeError as exc:
        raise RcdmError(f"{path}: malformed rcdm metadata ({exc})") from None
    try:
        return CheckpointMeta.from_dict(data)
    except RcdmError as exc:
        raise RcdmError(f"{path}: {exc}") from None


def load_checkpoint(
    path: str | Path, weights: str | None = None, device: str | torch.device = "cpu"
) -> tuple[CheckpointMeta, dict[str, torch.Tensor]]:
    """The metadata and one weight set (the checkpoint's default unless named)."""
    path = Path(path)
    meta = read_meta(path)
    set_name = weights or meta.default_weights
    if set_name not in meta.weight_sets:
        raise UsageError(
            f"{path} has no weight set {set_name!r}; it has: {', '.join(meta.weight_sets)}"
        )
    prefix = set_name + SEPARATOR
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                if key.startswith(prefix):
                    state[key[len(prefix):]] = f.get_tensor(key)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise RcdmError(f"{path}: could not read weights (truncated or corrupt?): {exc}") from None
    if not state:
        raise RcdmError(f"{path}: weight set {set_name!r} is listed but holds no tensors")
    return meta, state
