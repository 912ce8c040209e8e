"""What a plugin is written against: the one module a plugin, built-in or
third-party, imports from rcdm.

An encoder plugin registers :class:`EncoderSpec` objects from a ``@hookimpl``
``register_encoders(register)``; an attribute plugin registers :class:`AttributeSpec`
objects from ``register_attributes(register)`` (see docs/plugins.md). The weight
helpers are those nearly every encoder needs to load a published file exactly: read
it without running pickled code, find the state dict inside a training checkpoint,
and load it refusing any mismatch. Narrower helpers (key renaming, sub-trees, the
ResNet-50 building blocks the built-in encoders share) stay in
:mod:`rcdm_cli.encoders.weights` and :mod:`rcdm_cli.encoders.nets`, and may change.
"""

from rcdm_cli.encoders.attributes import AttributeSpec
from rcdm_cli.encoders.hooks import hookimpl
from rcdm_cli.encoders.spec import BuildRequest, EncoderSpec, FamilyMember, Layer, WeightSource
from rcdm_cli.encoders.weights import (
    drop_common_prefix,
    find_state_dict,
    load_numpy_pickle,
    load_strict,
    load_torch_file,
)
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.preprocessing import IMAGENET, IMAGENET_MEAN, IMAGENET_STD, RCDM, Preprocessing

__all__ = [
    "IMAGENET",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RCDM",
    "AttributeSpec",
    "BuildRequest",
    "EncoderSpec",
    "FamilyMember",
    "Layer",
    "Preprocessing",
    "RcdmError",
    "UsageError",
    "WeightSource",
    "drop_common_prefix",
    "find_state_dict",
    "hookimpl",
    "load_numpy_pickle",
    "load_strict",
    "load_torch_file",
]
