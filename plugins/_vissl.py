"""Reading VISSL model-zoo checkpoints (``*.torch``), shared by the Barlow Twins and
SimCLR encoders whose released RCDM models used them.

A VISSL checkpoint nests the network under ``classy_state_dict/base_model/model`` as
two state dicts: ``trunk`` (a torchvision-named ResNet under ``_feature_blocks.``)
and ``heads`` (``<head index>.clf.<layer index>.*``, one entry per head module of the
training config). Everything else (optimizer, loss, meters, AMP scaler, iteration
counters) is training state and is not read.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from rcdm_cli.encoders import load_torch_file, rename_keys, subtree

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


def load_vissl_model(path: str | Path, extra_safe_globals: Iterable[Any] = ()) -> tuple[StateDict, StateDict]:
    """The ``trunk`` and ``heads`` state dicts of a VISSL checkpoint."""
    checkpoint = load_torch_file(path, extra_safe_globals=extra_safe_globals)
    model = subtree(checkpoint, "classy_state_dict", "base_model", "model", source=str(path))
    source = f"{path} (classy_state_dict/base_model/model)"
    return subtree(model, "trunk", source=source), subtree(model, "heads", source=source)


def trunk_state(trunk: StateDict) -> dict[str, torch.Tensor]:
    """VISSL's ``_feature_blocks.`` prefix to ``trunk.``; any other key stays as it
    is, so that strict loading reports it."""
    return rename_keys(trunk, [("_feature_blocks.", "trunk.")])


def head_state(heads: StateDict, layers: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """VISSL head keys (``"1.clf.0"``) to the ``head`` layer's ``nn.Sequential``
    indices (``layers["1.clf.0"] == 3``); unmapped keys stay as they are, so that
    strict loading reports them."""
    return rename_keys(heads, [(f"{vissl}.", f"heads.head.{index}.") for vissl, index in layers.items()])
