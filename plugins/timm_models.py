"""Any timm model as an encoder: ``timm:<model name>``, e.g. ``timm:convnext_tiny.fb_in1k``.

``backbone`` is the model's pooled features (``num_classes=0``). Weights come from
timm's own source (the Hugging Face hub, cached by huggingface_hub), or from a local
file given with ``--weights`` (a timm state dict as safetensors or ``.pth``, also under
``state_dict`` or with ``module.``; classifier keys ignored). Everything
``rcdm encoders timm:<model>`` shows (layers, input size, normalisation, weight source
and licence) comes from timm's ``pretrained_cfg``, which is offline data: the model is
built on the meta device, without weights.

With ``RCDM_OFFLINE`` set, a copy already in the Hugging Face cache is used; nothing
is fetched.
"""

from __future__ import annotations

import contextlib
import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from rcdm_cli.download_cache import offline
from rcdm_cli.plugin import (
    BuildRequest,
    EncoderSpec,
    FamilyMember,
    Layer,
    Preprocessing,
    RcdmError,
    UsageError,
    WeightSource,
    drop_common_prefix,
    find_state_dict,
    hookimpl,
    load_strict,
    load_torch_file,
)

HF = "https://huggingface.co"
# what timm asks the hub for, in order, when the configuration names no file
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class PooledFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        return self.model(x)


def _timm():
    """timm, imported on first use: it brings torchvision, which costs seconds at
    every start of the CLI and every shell completion that lists encoders."""
    import timm

    return timm


def close_model_names(arch: str, models: list[str], n: int = 8) -> list[str]:
    """The names in ``models`` nearest to ``arch``: the most similar by spelling first
    (a typo: ``vit_base_patch16_244``), then names that start with it (an unfinished
    name: ``resnet5``), then names that contain it, at most ``n``; failing all these,
    names that contain its first part (``vit`` of ``vit_hugest``)."""
    import difflib

    key = arch.lower().replace("-", "_")
    by_similarity = difflib.get_close_matches(key, models, n=max(1, n - n // 3), cutoff=0.6)

    def most_alike(names: list[str]) -> list[str]:
        return sorted(names, key=lambda m: -difflib.SequenceMatcher(None, key, m).ratio())

    starting = most_alike([m for m in models if m.startswith(key)]) if key else []
    containing = most_alike([m for m in models if key in m]) if key else []
    names = list(dict.fromkeys(by_similarity + starting + containing))
    if not names and key.split("_")[0]:
        names = most_alike([m for m in models if key.split("_")[0] in m])
    return names[:n]


def _check_name(name: str) -> None:
    """A clear error for a model timm does not have, or a pretrained tag it lacks."""
    arch, _, tag = name.partition(".")
    if not _timm().is_model(arch):
        close = close_model_names(arch, _timm().list_models())
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UsageError(f"timm has no model {name!r}{hint}")
    if tag:
        try:
            _timm().models.get_pretrained_cfg(name)
        except RuntimeError:
            tags = [t.partition(".")[2] for t in _timm().list_pretrained(f"{arch}.*")][:8]
            raise UsageError(
                f"timm's {arch} has no pretrained weights {tag!r}; it has: {', '.join(tags) or 'none'}"
            ) from None


def _create(name: str, **kwargs: Any) -> nn.Module:
    _check_name(name)
    return _timm().create_model(name, num_classes=0, **kwargs)


@lru_cache(maxsize=32)
def _meta_model(name: str) -> tuple[int, dict]:
    """The model's feature width and resolved pretrained configuration, from a model
    built on the meta device: no memory, no weights, no network."""
    with torch.device("meta"):
        model = _create(name, pretrained=False)
    return int(model.num_features), dict(model.pretrained_cfg or {})


def _preprocessing(name: str, cfg: dict) -> Preprocessing:
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct", 0.875) or 1.0)
    interpolation = cfg.get("interpolation", "bicubic")
    return Preprocessing(
        f"timm:{name}",
        size=size,
        resize_to=int(math.floor(size / crop_pct)),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bicubic",
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
    )


def hub_cache_dir(hub_id: str) -> Path:
    """Where huggingface_hub keeps a model repository's files."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + hub_id.replace("/", "--"))


def _hub_files(cfg: dict) -> tuple[str, ...]:
    return (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else HUB_FILES


def _where(cfg: dict) -> tuple[str | None, Path | None]:
    """The address timm downloads the weights from, and where it keeps them."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        return f"{HF}/{hub_id}/resolve/main/{_hub_files(cfg)[0]}", hub_cache_dir(hub_id)
    url = cfg.get("url")
    if url:
        return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return None, None


def weight_source(name: str, cfg: dict) -> WeightSource | None:
    """timm's pretrained weights for one model, as ``rcdm encoders`` shows them."""
    address, cache = _where(cfg)
    if address is None:
        return None
    hub_id = cfg.get("hf_hub_id")
    notes = [f"downloaded by timm from the Hugging Face hub repository {hub_id}" if hub_id else f"downloaded by timm from {address}"]
    notes.append(f"cached in {cache}")
    if hub_id and cfg.get("url"):
        notes.append(f"originally published at {cfg['url']}")
    if cfg.get("crop_mode", "center") != "center":
        notes.append(f"timm evaluates it with crop_mode {cfg['crop_mode']!r}; rcdm centre-crops")
    return WeightSource(
        name=cfg.get("tag") or "default",
        url=f"{HF}/{hub_id}" if hub_id else address,
        license=cfg.get("license") or "not stated in timm's pretrained_cfg",
        description=f"timm's pretrained weights {cfg.get('architecture', name)}.{cfg.get('tag') or 'default'}",
        notes="; ".join(notes),
        checked_by="fetched by timm through huggingface_hub; rcdm checks no hash of it" if hub_id
        else "fetched by timm through torch hub; rcdm checks no hash of it",
    )


def describe(name: str):
    width, cfg = _meta_model(name)
    layers = {"backbone": Layer(width, "pooled features (timm num_classes=0)")}
    source = weight_source(name, cfg)
    return FamilyMember(layers, _preprocessing(name, cfg), (source,) if source else ())


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub logs every failed attempt ("... thrown while requesting HEAD")
    on its own stderr handler; the one error rcdm reports says it all."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub.setLevel(level)


def _cached_file(cfg: dict) -> Path | None:
    """A copy of the weights already in the Hugging Face (or torch hub) cache."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in _hub_files(cfg):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return Path(found)
        return None
    _, path = _where(cfg)
    return path if path is not None and path.is_file() else None


def _unreachable(name: str, cfg: dict, reason: str) -> RcdmError:
    address, cache = _where(cfg)
    if address is None:
        return RcdmError(f"timm publishes no pretrained weights for {name}; give a local file with --weights")
    return RcdmError(
        f"could not get timm's weights for {name} ({reason}): download {address} by other means and give it "
        f"with --weights, or fill the cache at {cache} from a machine that has it"
    )


def _pretrained(name: str) -> nn.Module:
    """The model with timm's weights: from the cache when offline, else through timm."""
    _, cfg = _meta_model(name)
    if offline():
        cached = _cached_file(cfg)
        if cached is None:
            raise _unreachable(name, cfg, "RCDM_OFFLINE is set and they are not in the cache")
        return _create(name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
    try:
        with _quiet_hub():
            return _create(name, pretrained=True)
    except (UsageError, RcdmError):
        raise
    except Exception as exc:  # network, hub and cache errors all mean the same thing here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise _unreachable(name, cfg, f"{type(exc).__name__}: {first}" if first else type(exc).__name__) from None


def local_state(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """A local timm state dict, without the classifier (``num_classes=0`` has none)."""
    state = find_state_dict(load_torch_file(path), ("state_dict", "model"), str(path), "a timm state dict")
    state = drop_common_prefix(drop_common_prefix(state, "module."), "model.")
    classifier = (model.pretrained_cfg or {}).get("classifier") or "head"
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return {k: v for k, v in state.items() if not any(k == p or k.startswith(p + ".") for p in prefixes)}


def build(request: BuildRequest) -> nn.Module:
    name = request.argument
    if request.weights_path is None:
        return PooledFeatures(_pretrained(name))
    model = _create(name, pretrained=False)
    path = request.weights_path
    load_strict(model, local_state(path, model), str(path))
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
