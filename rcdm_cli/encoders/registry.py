"""The plugin host: finds every installed plugin and builds encoders by name.

Plugins are modules advertised under the ``rcdm`` entry-point group; the built-in
encoders come through exactly that path (see ``pyproject.toml``). A plugin that fails
to import is reported, not fatal, so one broken third-party package cannot take the
tool down. Two plugins registering the same name is an error naming both.

Names: ``dino``, ``supervised@v2`` (a non-default published weight file), and for
families ``timm:convnext_tiny.fb_in1k``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy
import torch

from rcdm_cli.checkpoint.download import Progress
from rcdm_cli.encoders.encoder import Encoder
from rcdm_cli.encoders.hooks import ENTRY_POINT_GROUP, PROJECT, EncoderHooks
from rcdm_cli.encoders.spec import BuildRequest, EncoderSpec
from rcdm_cli.encoders.weights import fetch_weights
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.preprocessing import RCDM, Preprocessing

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Registered:
    spec: EncoderSpec
    plugin: str  # "distribution version" or the plugin's name when not installed


@dataclass(frozen=True)
class EncoderName:
    base: str
    variant: str | None = None
    argument: str | None = None

    @classmethod
    def parse(cls, text: str) -> "EncoderName":
        head, at, variant = text.strip().partition("@")
        base, colon, argument = head.partition(":")
        if not base or (at and not variant) or (colon and not argument):
            raise UsageError(f"malformed encoder name {text!r}: expected NAME, NAME@WEIGHTS or FAMILY:MODEL")
        return cls(base, variant or None, argument or None)

    def __str__(self) -> str:
        out = self.base + (f":{self.argument}" if self.argument else "")
        return out + (f"@{self.variant}" if self.variant else "")


class EncoderRegistry:
    def __init__(self, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(EncoderHooks)
        self.origins: dict[int, str] = {}
        self.failed: dict[str, str] = {}
        self._specs: dict[str, Registered] | None = None
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
            self.add_plugin(plugin, name=f"{origin}:{ep.name}", origin=origin)

    def add_plugin(self, plugin: Any, name: str | None = None, origin: str | None = None) -> None:
        """Register a plugin object (a module or class with ``@hookimpl`` functions)."""
        self.pm.register(plugin, name=name)
        self.origins[id(plugin)] = origin or name or getattr(plugin, "__name__", repr(plugin))
        self._specs = None

    @property
    def specs(self) -> dict[str, Registered]:
        if self._specs is None:
            specs: dict[str, Registered] = {}
            for impl in self.pm.hook.register_encoders.get_hookimpls():
                origin = self.origins.get(id(impl.plugin), impl.plugin_name)

                def register(spec: EncoderSpec, origin: str = origin) -> None:
                    _validate(spec, origin)
                    if spec.name in specs:
                        raise RcdmError(
                            f"encoder {spec.name!r} is registered twice: by {specs[spec.name].plugin} and by {origin}; "
                            "uninstall one of them"
                        )
                    specs[spec.name] = Registered(spec, origin)

                impl.function(register=register)
            self._specs = dict(sorted(specs.items()))
        return self._specs

    def get(self, name: str | EncoderName) -> tuple[Registered, EncoderName]:
        parsed = name if isinstance(name, EncoderName) else EncoderName.parse(name)
        entry = self.specs.get(parsed.base)
        if entry is None:
            raise UsageError(
                f"unknown encoder {parsed.base!r}; available: {', '.join(self.names())} (see `rcdm encoders`)"
            )
        spec = entry.spec
        if spec.family and not parsed.argument:
            raise UsageError(f"{spec.name!r} is a family of encoders: name one as {spec.name}:MODEL")
        if not spec.family and parsed.argument:
            raise UsageError(f"encoder {spec.name!r} takes no ':' argument")
        if parsed.variant is not None and spec.weight_source(parsed.variant) is None:
            names = ", ".join(s.name for s in spec.weights) or "none"
            raise UsageError(f"encoder {spec.name!r} has no published weights {parsed.variant!r}; it has: {names}")
        return entry, parsed

    def names(self) -> list[str]:
        return [n + (":MODEL" if r.spec.family else "") for n, r in self.specs.items()]

    def layers(self, name: str | EncoderName) -> tuple[dict[str, tuple[int, str]], Preprocessing]:
        """An encoder's layers (name -> (dim, description)) and native preprocessing,
        without building it."""
        entry, parsed = self.get(name)
        if entry.spec.family:
            layers, native = entry.spec.describe(parsed.argument)
            return dict(layers), native
        return dict(entry.spec.layers), entry.spec.preprocessing

    def catalog(self) -> list[dict[str, Any]]:
        """Everything ``rcdm encoders`` shows, one dict per encoder."""
        rows = []
        for name, entry in self.specs.items():
            spec = entry.spec
            rows.append(
                {
                    "name": name + (":MODEL" if spec.family else ""),
                    "description": spec.description,
                    "layers": {k: {"dim": d, "description": text} for k, (d, text) in spec.layers.items()},
                    "default_layer": spec.default_layer,
                    "input_size": spec.preprocessing.size,
                    "preprocessing": spec.preprocessing.to_dict(),
                    "preprocessing_description": spec.preprocessing.describe(),
                    "weights": [
                        {
                            "name": w.name,
                            "default": i == 0,
                            "url": w.url,
                            "license": w.license,
                            "description": w.description,
                            "notes": w.notes,
                            "preprocessing": w.preprocessing.to_dict() if w.preprocessing else None,
                        }
                        for i, w in enumerate(spec.weights)
                    ],
                    "family": spec.family,
                    "plugin": entry.plugin,
                }
            )
        return rows

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
        """Build an encoder with its published (or a local) weights, frozen."""
        entry, parsed = self.get(name)
        spec = entry.spec
        layers, native = self.layers(parsed)
        source = spec.weight_source(parsed.variant)
        if source is not None and source.preprocessing is not None:
            native = source.preprocessing
        if weights_path is not None:
            path: Path | None = Path(weights_path).expanduser()
            if not path.is_file():
                raise UsageError(f"no such weights file: {path}")
        elif source is not None and source.url:
            path = fetch_weights(source, progress)
        else:
            path = None
        network = spec.build(BuildRequest(path, source, parsed.argument, seed))
        encoder = Encoder(
            spec,
            network,
            name=str(EncoderName(parsed.base, None, parsed.argument)),
            layers=layers,
            preprocessing=resolve_preprocessing(preprocessing, native),
            native_preprocessing=native,
            source=source,
            weights_file=str(path) if path else None,
            plugin=entry.plugin,
        )
        return encoder.to(device)


def resolve_preprocessing(choice: str | Preprocessing | dict, native: Preprocessing) -> Preprocessing:
    if isinstance(choice, Preprocessing):
        return choice
    if isinstance(choice, dict):
        return Preprocessing.from_dict(choice)
    if choice == "native":
        return native
    if choice == "rcdm":
        return RCDM
    raise UsageError(f"unknown preprocessing {choice!r}: expected native or rcdm")


def _validate(spec: EncoderSpec, origin: str) -> None:
    if not isinstance(spec, EncoderSpec):
        raise RcdmError(f"plugin {origin} registered {type(spec).__name__}, not an EncoderSpec")
    if not _NAME.match(spec.name):
        raise RcdmError(f"plugin {origin} registered an invalid encoder name {spec.name!r} (use a-z, 0-9, _ . -)")
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
