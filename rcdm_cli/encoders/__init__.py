"""Encoders: the plugin host, and the names the rest of rcdm builds encoders with.

A plugin (built-in or third-party) registers :class:`EncoderSpec` objects through the
``register_encoders`` hook, and :class:`AttributeSpec` objects (visual attributes that
``rcdm evaluate attributes`` measures) through ``register_attributes``; plugins import
what they are written against from :mod:`rcdm_cli.plugin`. Here,
:func:`resolve_encoder` checks a name, layer, weights file and preprocessing without
building anything, and :func:`create_encoder` builds an encoder by name.
"""

from rcdm_cli.encoders.attributes import AttributeSpec
from rcdm_cli.encoders.encoder import Encoder, UnknownLayer
from rcdm_cli.encoders.hooks import hookimpl
from rcdm_cli.encoders.names import EncoderName
from rcdm_cli.encoders.registry import (
    EncoderRegistry,
    Lookup,
    ResolvedEncoder,
    create_encoder,
    get_registry,
    reset_registry,
    resolve_encoder,
)
from rcdm_cli.encoders.spec import EncoderSpec, FamilyMember, Layer
from rcdm_cli.preprocessing import Preprocessing

__all__ = [
    "AttributeSpec",
    "Encoder",
    "EncoderName",
    "EncoderRegistry",
    "EncoderSpec",
    "FamilyMember",
    "Layer",
    "Lookup",
    "Preprocessing",
    "ResolvedEncoder",
    "UnknownLayer",
    "create_encoder",
    "get_registry",
    "hookimpl",
    "reset_registry",
    "resolve_encoder",
]
