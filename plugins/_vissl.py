"""Reading VISSL model-zoo checkpoints (``*.torch``), shared by the Barlow Twins and
SimCLR encoders whose released RCDM models used them.

A VISSL checkpoint nests the network under ``classy_state_dict/base_model/model`` as
two state dicts: ``trunk`` (a torchvision-named ResNet under ``_feature_blocks.``)
and ``heads`` (``<head index>.clf.<layer index>.*``, one entry per head module of the
training config). Everything else (optimizer, loss, meters, AMP scaler, iteration
counters) is training state and is not read.

``--weights`` also takes the network without that nesting: the ``{trunk, heads}``
mapping (or any level of the nesting above it), a flat state dict with VISSL's module
names (``trunk._feature_blocks.*``, ``heads.<head>.clf.*``, as VISSL's model
``state_dict()`` gives them; ``.pth`` or safetensors), or the encoder's own
``state_dict()`` (``trunk.*``, ``heads.head.*``).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from rcdm_cli.encoders.weights import is_state_dict, rename_keys
from rcdm_cli.plugin import RcdmError, load_torch_file

VISSL_LICENSE = "MIT (VISSL)"
MODEL_ZOO = "https://dl.fbaipublicfiles.com/vissl/model_zoo"

_LARS_PATH = "vissl.optimizers.lars._LARS"
_LARS_EXCLUDE = "_exclude_bias_and_norm"


class _LarsStandIn:
    """Takes the place of VISSL's ``_LARS`` optimizer class, which a checkpoint
    names only to reach the parameter filter stored in its param groups."""


def _unused_parameter_filter(*_args: Any) -> bool:
    """Stands for the optimizer's bias/norm filter; an encoder never optimizes."""
    return False


def _lars_attribute(obj: Any, name: str) -> Any:
    """The pickled ``getattr(_LARS, "_exclude_bias_and_norm")`` and nothing else:
    a real ``getattr`` would let a file reach any attribute of any allowed object."""
    if obj is _LarsStandIn and name == _LARS_EXCLUDE:
        return _unused_parameter_filter
    raise pickle.UnpicklingError(f"refused getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r})")


LARS_SAFE_GLOBALS = (
    (_LarsStandIn, _LARS_PATH),
    (_lars_attribute, "builtins.getattr"),
)


StateDict = Mapping[str, torch.Tensor]

NESTING = ("classy_state_dict", "base_model", "model")
LAYOUT = (
    "VISSL's layout (classy_state_dict/base_model/model with trunk and heads, or a flat state dict "
    "with trunk._feature_blocks.* and heads.* keys)"
)


def _found(obj: Any) -> str:
    return ", ".join(sorted(map(str, obj))[:8]) if isinstance(obj, Mapping) else type(obj).__name__


def _model(obj: Any, path: Path) -> Any:
    """Down VISSL's nesting as far as the file has it: to the ``{trunk, heads}``
    mapping, or to a flat state dict."""
    for key in NESTING:
        if is_state_dict(obj) or not isinstance(obj, Mapping) or {"trunk", "heads"} <= set(obj):
            break
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if isinstance(obj, Mapping) and {"trunk", "heads"} <= set(obj):
        return obj
    if is_state_dict(obj) and any(str(k).startswith(("trunk.", "_feature_blocks.")) for k in obj):
        return obj
    raise RcdmError(f"{path} is not in {LAYOUT} (found: {_found(obj)})")


def vissl_state(path: str | Path, head_layers: Mapping[str, int], extra_safe_globals: Iterable[Any] = ()) -> dict:
    """The network in a VISSL checkpoint (in any of the forms above) under the
    encoder's names; keys that match no rule stay as they are, so that strict loading
    reports them."""
    model = _model(load_torch_file(path, extra_safe_globals=extra_safe_globals), Path(path))
    if "trunk" in model and isinstance(model["trunk"], Mapping):
        return {**trunk_state(model["trunk"]), **head_state(model["heads"], head_layers)}
    flat = rename_keys(model, [("trunk._feature_blocks.", "trunk."), ("_feature_blocks.", "trunk.")])
    return rename_keys(flat, [(f"heads.{vissl}.", f"heads.head.{index}.") for vissl, index in head_layers.items()])


def trunk_state(trunk: StateDict) -> dict[str, torch.Tensor]:
    """VISSL's ``_feature_blocks.`` prefix to ``trunk.``; any other key stays as it
    is, so that strict loading reports it."""
    return rename_keys(trunk, [("_feature_blocks.", "trunk.")])


def head_state(heads: StateDict, layers: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """VISSL head keys (``"1.clf.0"``) to the ``head`` layer's ``nn.Sequential``
    indices (``layers["1.clf.0"] == 3``); unmapped keys stay as they are, so that
    strict loading reports them."""
    return rename_keys(heads, [(f"{vissl}.", f"heads.head.{index}.") for vissl, index in layers.items()])
