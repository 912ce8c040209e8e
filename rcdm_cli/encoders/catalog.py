"""The rows ``rcdm encoders`` lists: one per encoder, or per family member, as plain
dicts so that the table, the detail view and ``--json`` all show the same facts."""

from __future__ import annotations

from typing import Any, Mapping

from rcdm_cli.encoders.spec import EncoderSpec, Layer, WeightSource
from rcdm_cli.preprocessing import Preprocessing


def _source_row(source: WeightSource, default: bool) -> dict[str, Any]:
    pre = source.preprocessing
    return {
        "name": source.name,
        "default": default,
        "url": source.url,
        "license": source.license,
        "license_short": short_license(source.license),
        "description": source.description,
        "notes": source.notes,
        "integrity": source.integrity,
        "sha256": source.sha256 or source.sha256_prefix,
        "preprocessing": pre.to_dict() if pre else None,
        "preprocessing_description": pre.describe() if pre else None,
    }


def catalog_row(
    name: str,
    spec: EncoderSpec,
    plugin: str,
    layers: Mapping[str, Layer],
    native: Preprocessing,
    weights: tuple[WeightSource, ...],
) -> dict[str, Any]:
    return {
        "name": name,
        "description": spec.description,
        "layers": {k: {"dim": layer.dim, "description": layer.description} for k, layer in layers.items()},
        "default_layer": spec.default_layer,
        "input_size": native.size,
        "preprocessing": native.to_dict(),
        "preprocessing_description": native.describe(),
        "weights": [_source_row(w, i == 0) for i, w in enumerate(weights)],
        "family": spec.family,
        "plugin": plugin,
    }


def short_license(text: str) -> str:
    """A licence statement's identifiers alone (``"CC-BY-NC-4.0 (SwAV)"`` ->
    ``"CC-BY-NC-4.0"``; ``"MIT (a); Apache-2.0 (b)"`` -> ``"MIT/Apache-2.0"``), for
    listings too narrow for the whole statement; a statement with no identifier
    stays whole."""
    parts = []
    for part in text.split(";"):
        head = part.split("(")[0].strip()
        if head and " " not in head and head not in parts:
            parts.append(head)
    return "/".join(parts) or text
