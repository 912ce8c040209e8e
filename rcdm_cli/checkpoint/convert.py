"""Importing official-layout RCDM weights into rcdm's checkpoint format."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from rcdm_cli.checkpoint.flags import parse_official_flags
from rcdm_cli.checkpoint.hashing import file_sha256
from rcdm_cli.checkpoint.metadata import RCDM_PREPROCESSING, CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.official import check_state_dict, infer_rep_dim, load_official_state_dict
from rcdm_cli.checkpoint.released import find_released, get_released
from rcdm_cli.checkpoint.resolve import released_path
from rcdm_cli.checkpoint.store import save_checkpoint
from rcdm_cli.diffusion.config import get_preset
from rcdm_cli.download_cache import Progress, download
from rcdm_cli.encoders.encoder import unknown_layer
from rcdm_cli.errors import RcdmError, UsageError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def installed_layer_dims(encoder: str) -> dict[str, int]:
    """The widths of an installed encoder's layers, for ``convert_official``'s
    ``layer_dims``; an unknown encoder is a usage error."""
    from rcdm_cli.encoders import get_registry

    return {name: layer.dim for name, layer in get_registry().describe(encoder).layers.items()}


def _encoder_from_flags(type_model: str | None, use_head: bool | None) -> tuple[str | None, str | None]:
    if type_model is None:
        return None, None
    return type_model, ("head" if use_head else "backbone")


def convert_official(
    source: str,
    output: str | Path,
    *,
    flags: str | None = None,
    preset: str | None = None,
    encoder: str | None = None,
    layer: str | None = None,
    rep_dim: int | None = None,
    dtype: str = "float32",
    progress: Progress | None = None,
    layer_dims: Callable[[str], dict[str, int]] | None = None,
) -> dict:
    """Load, check and re-save; returns a summary of what was written.

    ``layer_dims(encoder)`` gives the widths of an encoder's layers
    (:func:`installed_layer_dims` looks them up among the installed encoders): with it, an encoder or layer that does not exist, or
    whose width is not the file's, is refused here rather than at the first sampling.
    """
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if flags and preset:
        raise UsageError("give --flags or --preset, not both")
    if (encoder is None) != (layer is None):
        raise UsageError("--encoder and --layer go together: give both or neither")
    if layer == "trunk":  # the paper's and the original scripts' name for it
        layer = "backbone"

    released = None
    if source.startswith("released:"):
        released = get_released(source[len("released:"):])
        path = download(released.url, released_path(released.name), progress=progress)
    else:
        path = Path(source).expanduser()
    state = load_official_state_dict(path)
    file_rep = infer_rep_dim(state)

    if released is not None and not (flags or preset):
        meta = released.meta()
        unet, diffusion = meta.unet, meta.diffusion
        if encoder is None:
            encoder, layer = released.encoder, released.layer
    else:
        if flags:
            parsed = parse_official_flags(flags, rep_dim=file_rep)
            unet, diffusion = parsed.unet, parsed.diffusion
            flag_encoder, flag_layer = _encoder_from_flags(parsed.type_model, parsed.use_head)
            if flag_encoder and encoder and (flag_encoder, flag_layer) != (encoder, layer):
                raise UsageError(
                    f"--flags say {flag_encoder}/{flag_layer} but --encoder/--layer say {encoder}/{layer}"
                )
            encoder, layer = encoder or flag_encoder, layer or flag_layer
        else:
            chosen = get_preset(preset or "rcdm-128")
            unet, diffusion = chosen.unet.with_rep_dim(file_rep), chosen.diffusion
        if unet.rep_dim is None and file_rep is not None:
            unet = unet.with_rep_dim(file_rep)

    if rep_dim is not None and file_rep != rep_dim:
        raise UsageError(f"{path} was trained on {file_rep}-d representations, not {rep_dim}-d (--rep-dim)")
    if encoder is not None and layer_dims is not None:
        dims = layer_dims(encoder)
        if layer not in dims:
            raise unknown_layer(encoder, layer, dims)
        if file_rep is not None and dims[layer] != file_rep:
            raise UsageError(
                f"{encoder}/{layer} gives {dims[layer]}-d representations, but {path} was trained "
                f"on {file_rep}-d ones: wrong --encoder/--layer, or the wrong file"
            )
    if encoder is not None:
        known = find_released(encoder, layer)
        if known is not None and file_rep != known.rep_dim:
            raise UsageError(
                f"{encoder}/{layer} gives {known.rep_dim}-d representations, but {path} was trained "
                f"on {file_rep}-d ones: wrong --encoder/--layer, or the wrong file"
            )
    try:
        check_state_dict(state, unet, source=str(path))
    except RcdmError as exc:
        if flags or preset or released is not None:
            raise
        raise RcdmError(f"{exc}; if it is not an rcdm-128 model, give the flags it was trained with (--flags)") from None

    if encoder is not None:
        if file_rep is None:
            raise UsageError(f"{path} is an unconditional model; --encoder/--layer do not apply")
        enc = EncoderInfo(
            name=encoder,
            layer=layer,
            rep_dim=file_rep,
            weights=released.encoder_weights if released else None,
            preprocessing=dict(RCDM_PREPROCESSING),
        )
    else:
        enc = None
    source_info = {"kind": "converted", "file": path.name, "sha256": file_sha256(path)}
    if released is not None:
        source_info.update({"released": released.name, "url": released.url})
    # The released files (rcdm_ema_*.pt) and guided-diffusion's ema_RATE_STEP.pt hold
    # EMA weights; say so, as the released checkpoints' own metadata does.
    weight_set = "ema" if released is not None or "ema" in path.name.lower() else "model"
    meta = CheckpointMeta(
        unet=unet, diffusion=diffusion, encoder=enc, source=source_info, weight_sets=(weight_set,), default_weights=weight_set
    )
    target = DTYPES[dtype]
    save_checkpoint(output, {weight_set: {k: v.to(target) for k, v in state.items()}}, meta)
    return {
        "output": str(output),
        "description": meta.describe(),
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values())),
        "dtype": dtype,
        "meta": meta.to_dict(),
    }
