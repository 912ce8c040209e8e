"""Any timm model as an encoder: ``timm:<model name>``, e.g. ``timm:convnext_tiny.fb_in1k``.

``backbone`` is the model's pooled features (``num_classes=0``). Weights come from
timm's own source (the Hugging Face hub, cached by timm), or from a local file given
with ``--weights`` (a timm state dict, ``.safetensors`` or ``.pth``, classifier keys
ignored). Native preprocessing follows the model's pretrained configuration.
"""

from __future__ import annotations

import math
from functools import lru_cache

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from rcdm_cli.encoders import (
    BuildRequest,
    EncoderSpec,
    Preprocessing,
    RcdmError,
    UsageError,
    hookimpl,
    load_strict,
    load_torch_file,
    offline,
)


class PooledFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        return self.model(x)


def _create(name: str, pretrained: bool) -> nn.Module:
    if not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('.')[0].split('_')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UsageError(f"timm has no model {name!r}{hint}")
    return timm.create_model(name, pretrained=pretrained, num_classes=0)


@lru_cache(maxsize=32)
def describe(name: str):
    with torch.device("meta"):
        model = _create(name, pretrained=False)
    cfg = model.pretrained_cfg or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct", 0.875) or 1.0)
    interpolation = cfg.get("interpolation", "bicubic")
    preprocessing = Preprocessing(
        f"timm:{name}",
        size=size,
        resize_to=int(math.floor(size / crop_pct)),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic",
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
    )
    return {"backbone": (int(model.num_features), "pooled features (timm num_classes=0)")}, preprocessing


def build(request: BuildRequest) -> nn.Module:
    name = request.argument
    if request.weights_path is None:
        if offline():
            raise RcdmError(f"RCDM_OFFLINE is set: timm cannot fetch {name}'s weights; give a local file with --weights")
        try:
            model = _create(name, pretrained=True)
        except (UsageError, RcdmError):
            raise
        except Exception as exc:
            cfg = timm.models.get_pretrained_cfg(name.split(".")[0]) if "." not in name else None
            where = getattr(cfg, "hf_hub_id", None) or name
            raise RcdmError(
                f"could not get timm's pretrained weights for {name} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); from {where} via the Hugging Face hub, "
                "or give a local file with --weights"
            ) from None
        return PooledFeatures(model)
    model = _create(name, pretrained=False)
    path = request.weights_path
    state = load_file(str(path)) if path.suffix == ".safetensors" else load_torch_file(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    classifier = (model.pretrained_cfg or {}).get("classifier") or "head"
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if not any(k == p or k.startswith(p + ".") for p in prefixes)}
    load_strict(model, state, str(path))
    return PooledFeatures(model)


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="timm",
            description="any timm model by name (timm:MODEL); backbone = its pooled features",
            build=build,
            family=True,
            describe=describe,
        )
    )
