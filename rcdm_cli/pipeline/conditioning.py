"""Which representation conditions a model, decided before any work starts.

A checkpoint whose metadata names an encoder and layer is used with exactly that
representation, computed with the preprocessing recorded in the metadata (so a
released model gets the [-1, 1]-scaled 224x224 input it was trained on). Options
that contradict the metadata are errors, not overrides. A model without an encoder
in its metadata (converted with no --encoder, or ``init:``) takes the encoder named on
the command line, at the native preprocessing unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rcdm_cli.checkpoint.hashing import file_sha256
from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.checkpoint.released import find_released
from rcdm_cli.download_cache import Progress
from rcdm_cli.encoders import Encoder, EncoderName, Preprocessing, ResolvedEncoder, get_registry, resolve_encoder
from rcdm_cli.errors import UsageError


@dataclass(frozen=True)
class ConditioningPlan:
    """An encoder, a layer and a preprocessing, checked against a checkpoint."""

    encoder: str  # NAME[@WEIGHTS] or FAMILY:MODEL
    layer: str
    rep_dim: int
    preprocessing: Preprocessing
    weights_path: Path | None = None
    # what the plan was checked against, kept so that building does not ask the plugin again
    resolved: ResolvedEncoder | None = field(default=None, repr=False, compare=False)

    def build(self, device: torch.device | str = "cpu", progress: Progress | None = None) -> Encoder:
        if self.resolved is None:
            resolved = resolve_encoder(self.encoder, self.layer, self.weights_path, self.preprocessing)
        else:
            resolved = replace(self.resolved, weights_path=self.weights_path)
        return resolved.build(device, progress=progress)

    def describe(self) -> dict:
        return {
            "encoder": self.encoder,
            "layer": self.layer,
            "rep_dim": self.rep_dim,
            "preprocessing": self.preprocessing.to_dict(),
            "weights_file": str(self.weights_path) if self.weights_path else None,
        }


def default_checkpoint(encoder: str | None, layer: str | None) -> str:
    """The released checkpoint for an encoder and layer, when no --checkpoint is given."""
    if encoder is None:
        raise UsageError("give --checkpoint, or --encoder and --layer of a released model (e.g. --encoder dino --layer head)")
    base = EncoderName.parse(encoder).base
    layer = layer or "backbone"
    released = find_released(base, layer)
    if released is None:
        raise UsageError(
            f"no released RCDM model for {base}/{layer}; pass --checkpoint (a model trained with "
            "`rcdm train`, a converted file, or init:PRESET)"
        )
    return f"released:{released.name}"


def plan_conditioning(
    meta: CheckpointMeta,
    *,
    encoder: str | None = None,
    layer: str | None = None,
    weights_path: str | Path | None = None,
    preprocessing: str | None = None,
) -> ConditioningPlan:
    recorded = meta.encoder
    if preprocessing is not None and preprocessing not in ("native", "rcdm"):
        raise UsageError(f"unknown preprocessing {preprocessing!r}: expected native or rcdm")
    if recorded is not None:
        if encoder is not None:
            given = EncoderName.parse(encoder)
            recorded_variant = EncoderName.parse(recorded.name).variant or recorded.weights
            if given.base != EncoderName.parse(recorded.name).base or (
                given.variant and given.variant != recorded_variant
            ):
                raise UsageError(
                    f"the model was trained on {recorded.name}/{recorded.layer} representations; "
                    f"--encoder {encoder} contradicts it (leave --encoder out)"
                )
        if layer is not None and layer != recorded.layer:
            raise UsageError(
                f"the model was trained on the {recorded.layer!r} layer of {recorded.name}; "
                f"--layer {layer} contradicts it (leave --layer out)"
            )
        recorded_kind = "rcdm" if recorded.preprocessing.get("name") == "rcdm" else "native"
        if preprocessing is not None and preprocessing != recorded_kind:
            raise UsageError(
                f"the model was trained on representations of {Preprocessing.from_dict(recorded.preprocessing).describe()} "
                f"inputs; --preprocessing {preprocessing} contradicts it"
            )
        if recorded.weights_sha256:
            if weights_path is None:
                raise UsageError(
                    f"the model was trained with {recorded.name} weights from a local file "
                    f"(sha256 {recorded.weights_sha256[:12]}...); pass that file with --weights"
                )
            if not Path(weights_path).expanduser().is_file():
                raise UsageError(f"no such weights file: {weights_path}")
            if file_sha256(Path(weights_path).expanduser()) != recorded.weights_sha256:
                raise UsageError(
                    f"--weights {weights_path} is not the encoder file the model was trained with "
                    f"(sha256 {recorded.weights_sha256[:12]}...)"
                )
        name = recorded.name
        if recorded.weights and not EncoderName.parse(name).variant:
            if get_registry().get(name).spec.weight_source(recorded.weights) is None:
                raise UsageError(
                    f"the model was trained with {name}'s {recorded.weights!r} weights, which the installed "
                    f"{name} encoder does not provide"
                )
            name = f"{name}@{recorded.weights}"
        recorded_pre = Preprocessing.from_dict(recorded.preprocessing)
        resolved = resolve_encoder(name, recorded.layer, preprocessing=recorded_pre)
    else:
        if encoder is None:
            raise UsageError(
                "the model's metadata names no encoder: give --encoder and --layer, or condition on vectors with --rep"
            )
        name = encoder
        resolved = resolve_encoder(encoder, layer, preprocessing=preprocessing)

    dim = resolved.dim
    if meta.rep_dim != dim:
        raise UsageError(
            f"{name}/{resolved.layer} gives {dim}-d representations but the model is conditioned on {meta.rep_dim}-d ones"
        )
    path = Path(weights_path).expanduser() if weights_path is not None else None
    if path is not None and not path.is_file():
        raise UsageError(f"no such weights file: {path}")
    return ConditioningPlan(name, resolved.layer, dim, resolved.preprocessing, path, resolved)


def check_vectors(meta: CheckpointMeta, info: dict | None, source: str) -> None:
    """Vectors computed by ``rcdm encode`` for another representation than the one the
    model is conditioned on (another encoder or layer, other weights, or another
    preprocessing of the same images) give samples that mean nothing; refuse them.
    Vectors without a record (.npy, made elsewhere) are taken as they are."""
    recorded = meta.encoder
    if recorded is None or info is None:
        return
    hint = "; compute them with `rcdm encode IMAGES --checkpoint CHECKPOINT`"
    given, trained = EncoderName.parse(str(info["encoder"])), EncoderName.parse(recorded.name)
    if given.base != trained.base or given.argument != trained.argument or info["layer"] != recorded.layer:
        raise UsageError(
            f"{source} holds {info['encoder']}/{info['layer']} representations but the model is conditioned on "
            f"{recorded.name}/{recorded.layer}{hint}"
        )
    want_weights = trained.variant or recorded.weights
    if want_weights and info.get("weights") and info["weights"] != want_weights:
        raise UsageError(
            f"{source} was computed with {given.base}'s {info['weights']!r} weights but the model was trained with "
            f"{want_weights!r}{hint}"
        )
    if recorded.weights_sha256 and info.get("weights_sha256") != recorded.weights_sha256:
        raise UsageError(
            f"{source} was not computed with the local encoder weights the model was trained with "
            f"(sha256 {recorded.weights_sha256[:12]}...){hint}"
        )
    try:
        theirs = Preprocessing.from_dict(info.get("preprocessing") or {})
    except (UsageError, TypeError):
        return
    ours = Preprocessing.from_dict(recorded.preprocessing)
    if theirs != ours:
        raise UsageError(
            f"{source} was computed from {theirs.describe()} inputs but the model was trained on representations of "
            f"{ours.describe()} inputs{hint}"
        )
