"""Encoders: the plugin host and the public API plugins are written against.

A plugin (built-in or third-party) registers :class:`EncoderSpec` objects through the
``register_encoders`` hook, and :class:`AttributeSpec` objects (visual attributes that
``rcdm evaluate attributes`` measures) through ``register_attributes``;
:func:`create_encoder` builds an encoder by name.
"""

from rcdm_cli.download_cache import offline
from rcdm_cli.encoders.attributes import AttributeSpec
from rcdm_cli.encoders.encoder import Encoder
from rcdm_cli.encoders.hooks import ENTRY_POINT_GROUP, hookimpl
from rcdm_cli.encoders.nets import ResNetWithHeads, global_pool, mlp, resnet50_trunk, resnet_stages, uninitialized
from rcdm_cli.encoders.numpy_pickle import NumpyUnpickler, PickleRefused
from rcdm_cli.encoders.registry import EncoderName, EncoderRegistry, create_encoder, get_registry, reset_registry
from rcdm_cli.encoders.spec import BuildRequest, EncoderSpec, WeightSource
from rcdm_cli.encoders.weights import (
    drop_common_prefix,
    encoder_cache_dir,
    fetch_weights,
    find_state_dict,
    is_safetensors,
    is_state_dict,
    load_numpy_pickle,
    load_strict,
    load_torch_file,
    rename_keys,
    strip_prefix,
    subtree,
    tensors_only,
)
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.preprocessing import IMAGENET, IMAGENET_MEAN, IMAGENET_STD, RCDM, Preprocessing

__all__ = [
    "ENTRY_POINT_GROUP",
    "IMAGENET",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RCDM",
    "AttributeSpec",
    "BuildRequest",
    "Encoder",
    "EncoderName",
    "EncoderRegistry",
    "EncoderSpec",
    "NumpyUnpickler",
    "PickleRefused",
    "Preprocessing",
    "RcdmError",
    "ResNetWithHeads",
    "WeightSource",
    "create_encoder",
    "drop_common_prefix",
    "encoder_cache_dir",
    "fetch_weights",
    "find_state_dict",
    "get_registry",
    "global_pool",
    "hookimpl",
    "is_safetensors",
    "is_state_dict",
    "load_numpy_pickle",
    "load_strict",
    "load_torch_file",
    "mlp",
    "offline",
    "rename_keys",
    "reset_registry",
    "resnet50_trunk",
    "resnet_stages",
    "strip_prefix",
    "subtree",
    "tensors_only",
    "uninitialized",
    "UsageError",
]
