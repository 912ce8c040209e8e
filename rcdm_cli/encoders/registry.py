"""The plugin host: finds every installed plugin and builds encoders by name.

Plugins are modules advertised under the ``rcdm`` entry-point group; the built-in
encoders come through exactly that path (see ``pyproject.toml``). A plugin that fails
to import, or whose hook raises, is reported (with its distribution) and left out, not
fatal, so one broken third-party package cannot take the tool down. Two plugins
registering the same name is an error naming both.

Names: ``dino``, ``supervised@v2`` (a non-default published weight file), and for
families ``timm:convnext_tiny.fb_in1k``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import pluggy
import torch

from rcdm_cli.download_cache import Progress
from rcdm_cli.encoders.attributes import AttributeSpec
from rcdm_cli.encoders.catalog import catalog_row
from rcdm_cli.encoders.encoder import Encoder
from rcdm_cli.encoders.hooks import ENTRY_POINT_GROUP, PROJECT, PluginHooks
from rcdm_cli.encoders.names import EncoderName
from rcdm_cli.encoders.resolve import ResolvedEncoder, display_name, resolve_preprocessing, unknown_layer
from rcdm_cli.encoders.spec import EncoderSpec, FamilyMember
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.preprocessing import Preprocessing

__all__ = [
    "EncoderName",
    "EncoderRegistry",
    "Lookup",
    "Registered",
    "ResolvedEncoder",
    "create_encoder",
    "get_registry",
    "reset_registry",
    "resolve_encoder",
    "resolve_preprocessing",
]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Registered:
    spec: EncoderSpec
    plugin: str  # "distribution version" or the plugin's name when not installed


@dataclass(frozen=True)
class RegisteredAttribute:
    spec: AttributeSpec
    plugin: str


class Lookup(NamedTuple):
    """A name found among the registered encoders: the registration and the parsed
    name (a tuple, so ``entry, parsed = registry.get(name)`` keeps working)."""

    entry: Registered
    name: EncoderName

    @property
    def spec(self) -> EncoderSpec:
        return self.entry.spec

    @property
    def plugin(self) -> str:
        return self.entry.plugin


class DuplicateNameError(RcdmError):
    """Two plugins registered one name: which one the user meant cannot be guessed."""


class EncoderRegistry:
    def __init__(self, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(PluginHooks)
        self.origins: dict[int, str] = {}
        self.labels: dict[int, str] = {}
        # "entry point (distribution version)" -> what went wrong
        self.failed: dict[str, str] = {}
        self._specs: dict[str, Registered] | None = None
        self._attributes: dict[str, RegisteredAttribute] | None = None
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else ep.name
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin is reported, not fatal
                self.failed[f"{ep.name} ({origin})"] = f"{type(exc).__name__}: {exc}"
                continue
            if self.pm.is_registered(plugin):
                continue
            self.add_plugin(plugin, name=f"{origin}:{ep.name}", origin=origin, label=f"{ep.name} ({origin})")

    def add_plugin(self, plugin: Any, name: str | None = None, origin: str | None = None, label: str | None = None) -> None:
        """Register a plugin object (a module or class with ``@hookimpl`` functions).
        ``origin`` is what listings attribute its encoders to (its distribution);
        ``label`` names it among the failed plugins."""
        self.pm.register(plugin, name=name)
        origin = origin or name or getattr(plugin, "__name__", repr(plugin))
        self.origins[id(plugin)] = origin
        self.labels[id(plugin)] = label or origin
        self._specs = None
        self._attributes = None

    @property
    def specs(self) -> dict[str, Registered]:
        if self._specs is None:
            found = self._collect("register_encoders", EncoderSpec, "encoder", Registered)
            self._specs = dict(sorted(found.items()))
        return self._specs

    @property
    def attributes(self) -> dict[str, "RegisteredAttribute"]:
        """Every registered attribute estimator, by name."""
        if self._attributes is None:
            self._attributes = self._collect("register_attributes", AttributeSpec, "attribute", RegisteredAttribute)
        return self._attributes

    def _collect(self, hook: str, kind: type, noun: str, entry: type) -> dict[str, Any]:
        """Run every plugin's ``hook``. If one raises, none of what it registered is
        kept (half a plugin is worse than none) and it is recorded as failed; a name
        registered by two plugins stays an error naming both."""
        found: dict[str, Any] = {}
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            origin = self.origins.get(id(impl.plugin), impl.plugin_name)
            mine: list[str] = []

            def register(spec, origin=origin, mine=mine) -> None:
                _validate(spec, origin, kind, noun)
                if spec.name in found:
                    raise DuplicateNameError(
                        f"{noun} {spec.name!r} is registered twice: by {found[spec.name].plugin} and by {origin}; "
                        "uninstall one of them"
                    )
                found[spec.name] = entry(spec, origin)
                mine.append(spec.name)

            try:
                impl.function(register=register)
            except DuplicateNameError:
                raise
            except Exception as exc:  # a broken plugin is reported, not fatal
                for name in mine:
                    del found[name]
                label = self.labels.get(id(impl.plugin), origin)
                self.failed[label] = f"{hook} raised {type(exc).__name__}: {exc}"
        return found

    def attribute(self, name: str) -> AttributeSpec:
        entry = self.attributes.get(name)
        if entry is None:
            broken = f"; {len(self.failed)} plugin(s) failed to load: {', '.join(self.failed)}" if self.failed else ""
            raise UsageError(
                f"unknown attribute {name!r}; available: {', '.join(sorted(self.attributes))}{broken} (see `rcdm attributes`)"
            )
        return entry.spec

    def get(self, name: str | EncoderName) -> Lookup:
        parsed = name if isinstance(name, EncoderName) else EncoderName.parse(name)
        entry = self.specs.get(parsed.base)
        if entry is None:
            broken = f"; {len(self.failed)} plugin(s) failed to load: {', '.join(self.failed)}" if self.failed else ""
            raise UsageError(
                f"unknown encoder {parsed.base!r}; available: {', '.join(self.names())}{broken} (see `rcdm encoders`)"
            )
        spec = entry.spec
        if spec.family and not parsed.argument:
            raise UsageError(f"{spec.name!r} is a family of encoders: name one as {spec.name}:MODEL")
        if not spec.family and parsed.argument:
            raise UsageError(f"encoder {spec.name!r} takes no ':' argument")
        if parsed.variant is not None and spec.weight_source(parsed.variant) is None:
            names = ", ".join(s.name for s in spec.weights) or "none"
            raise UsageError(f"encoder {spec.name!r} has no published weights {parsed.variant!r}; it has: {names}")
        return Lookup(entry, parsed)

    def display_name(self, name: str | EncoderName) -> str:
        """The name a reader needs: ``NAME@WEIGHTS`` only when the weights are not the
        encoder's default ones (``supervised@v2``, but ``dino`` for dino's own)."""
        entry, parsed = self.get(name)
        return display_name(entry.spec, parsed)

    def names(self) -> list[str]:
        return [n + (":MODEL" if r.spec.family else "") for n, r in self.specs.items()]

    def describe(self, name: str | EncoderName) -> FamilyMember:
        """An encoder's layers, native preprocessing and weight sources, without
        building it. For a family member, what the family's ``describe`` says of it
        (which refuses an unknown member)."""
        entry, parsed = self.get(name)
        spec = entry.spec
        if not spec.family:
            return FamilyMember(dict(spec.layers), spec.preprocessing, tuple(spec.weights))
        member = FamilyMember.of(spec.describe(parsed.argument))
        return member._replace(layers=dict(member.layers))

    def catalog(self) -> list[dict[str, Any]]:
        """Everything ``rcdm encoders`` shows, one dict per encoder (a family as one
        row, ``NAME:MODEL``)."""
        rows = []
        for name, entry in self.specs.items():
            spec = entry.spec
            rows.append(
                catalog_row(
                    name + (":MODEL" if spec.family else ""), spec, entry.plugin, dict(spec.layers),
                    spec.preprocessing, tuple(spec.weights),
                )
            )
        return rows

    def member(self, name: str | EncoderName) -> dict[str, Any]:
        """The catalog row of one family member (``timm:convnext_tiny.fb_in1k``): its
        own layers, input, weights and licence."""
        entry, parsed = self.get(name)
        if not entry.spec.family:
            raise UsageError(f"encoder {entry.spec.name!r} takes no ':' argument")
        layers, native, weights = self.describe(parsed)
        row = catalog_row(str(parsed.without_weights), entry.spec, entry.plugin, layers, native, weights)
        row["family"], row["member_of"] = False, entry.spec.name
        return row

    def resolve(
        self,
        name: str | EncoderName,
        layer: str | None = None,
        weights: str | Path | None = None,
        preprocessing: str | Preprocessing | dict | None = None,
    ) -> ResolvedEncoder:
        """Check an encoder name, layer (default: the encoder's own default), local
        weights file and preprocessing (``native`` when None) against the installed
        plugins, without building anything; refusals are usage errors."""
        return self._resolve(name, layer, weights, preprocessing, check_layer=True)

    def _resolve(self, name, layer, weights, preprocessing, *, check_layer: bool) -> ResolvedEncoder:
        entry, parsed = self.get(name)
        layers, native, _ = self.describe(parsed)
        source = entry.spec.weight_source(parsed.variant)
        if source is not None and source.preprocessing is not None:
            native = source.preprocessing
        chosen = layer or entry.spec.default_layer
        requested = name if isinstance(name, str) else str(name)
        if check_layer and chosen not in layers:
            raise unknown_layer(requested, chosen, layers)
        path = Path(weights).expanduser() if weights is not None else None
        if path is not None and not path.is_file():
            raise UsageError(f"no such weights file: {path}")
        return ResolvedEncoder(
            requested=requested,
            name=parsed,
            spec=entry.spec,
            plugin=entry.plugin,
            source=source,
            layer=chosen,
            layers=layers,
            native_preprocessing=native,
            preprocessing=resolve_preprocessing(preprocessing, native),
            weights_path=path,
        )

    def create(
        self,
        name: str,
        *,
        weights_path: str | Path | None = None,
        preprocessing: str | Preprocessing | dict = "native",
        device: torch.device | str = "cpu",
        progress: Progress | None = None,
        seed: int = 0,
    ) -> Encoder:
        """Build an encoder with its published (or a local) weights, frozen. Its layer
        is chosen at each call, so none is checked here."""
        resolved = self._resolve(name, None, weights_path, preprocessing, check_layer=False)
        return resolved.build(device, progress=progress, seed=seed)


def _validate(spec: Any, origin: str, kind: type = EncoderSpec, noun: str = "encoder") -> None:
    if not isinstance(spec, kind):
        raise RcdmError(f"plugin {origin} registered {type(spec).__name__}, not an {kind.__name__}")
    if not _NAME.match(spec.name):
        raise RcdmError(f"plugin {origin} registered an invalid {noun} name {spec.name!r} (use a-z, 0-9, _ . -)")
    if kind is AttributeSpec:
        if spec.categories and len(set(spec.categories)) != len(spec.categories):
            raise RcdmError(f"plugin {origin}: attribute {spec.name!r} repeats a category")
        if spec.dim < 1 or (spec.components and len(spec.components) != spec.dim):
            raise RcdmError(f"plugin {origin}: attribute {spec.name!r} needs dim >= 1 and one component name per value")
        return
    if spec.family:
        if spec.describe is None:
            raise RcdmError(f"plugin {origin}: family {spec.name!r} needs a describe function")
    elif spec.default_layer not in spec.layers:
        raise RcdmError(f"plugin {origin}: encoder {spec.name!r} has no layer {spec.default_layer!r}")


_registry: EncoderRegistry | None = None


def get_registry() -> EncoderRegistry:
    global _registry
    if _registry is None:
        _registry = EncoderRegistry()
    return _registry


def reset_registry() -> None:
    """Forget loaded plugins (after installing one at run time, and in tests)."""
    global _registry
    _registry = None


def create_encoder(name: str, **kwargs) -> Encoder:
    return get_registry().create(name, **kwargs)


def resolve_encoder(
    name: str | EncoderName,
    layer: str | None = None,
    weights: str | Path | None = None,
    preprocessing: str | Preprocessing | dict | None = None,
) -> ResolvedEncoder:
    """:meth:`EncoderRegistry.resolve` on the installed plugins."""
    return get_registry().resolve(name, layer, weights, preprocessing)
