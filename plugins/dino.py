"""DINO encoders (Caron et al., *Emerging Properties in Self-Supervised Vision
Transformers*, 2021): the ResNet-50 the released RCDM ``dino`` models were trained
on, and the ViT-S/16 and ViT-B/16.

Weights are the published *full* training checkpoints
(``dino_*_pretrain_full_checkpoint.pth``), of which the **teacher** is used, as RCDM
did. Such a file is a dict with ``student``, ``teacher``, ``optimizer``, ``epoch``,
``args`` (an ``argparse.Namespace``) and, depending on the release, ``dino_loss`` and
``fp16_scaler``; only ``teacher`` is read (the rest may be absent). The teacher holds
``backbone.*`` and ``head.*``:

- ``head.mlp.*`` is the projection MLP up to its 256-d bottleneck. The ``head`` layer
  is that bottleneck's output, *before* the L2 normalisation of DINO's head: what
  RCDM's ``dino-head`` model was conditioned on (its ``get_ssl_models.py`` stops
  after ``mlp``).
- ``head.last_layer.*`` is the prototype layer applied after the normalisation
  (60000 outputs for the ResNet-50, a plain ``Linear``; 65536 outputs, weight-normed
  as ``weight_g``/``weight_v``, for the ViTs). No layer uses it, so it is dropped on
  purpose: it is neither required nor checked, and a teacher stripped of it loads too.
  Every other key is loaded strictly (a missing, unexpected or mis-shaped key is an
  error that names it).

The ResNet-50's teacher was wrapped in DistributedDataParallel (DINO wraps it when the
network has batch norms), so its keys carry ``module.``; the ViTs' do not. ``--weights``
also takes the teacher alone, as a plain state dict (``.pth`` or safetensors), with or
without ``module.``: its keys are this encoder's own ``state_dict()`` keys.

The ViTs are timm's ``vit_small_patch16_224`` / ``vit_base_patch16_224``, whose key
names are those of DINO's own ``vision_transformer.py`` (a copy of timm's), built with
DINO's settings (``qkv_bias=True``, LayerNorm eps 1e-6, class token); ``backbone`` is
the class token after the final norm, as DINO's ``VisionTransformer.forward``.

DINO's code and weights are under the Apache 2.0 licence (facebookresearch/dino).
Native preprocessing is DINO's evaluation transform: resize 256 (bicubic), centre
crop 224, ImageNet mean/std.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from rcdm_cli.encoders.nets import global_pool, mlp, resnet50_trunk, resnet_stages
from rcdm_cli.encoders.weights import is_state_dict
from rcdm_cli.plugin import (
    BuildRequest,
    EncoderSpec,
    Layer,
    Preprocessing,
    RcdmError,
    WeightSource,
    drop_common_prefix,
    hookimpl,
    load_strict,
    load_torch_file,
)

LICENSE = "Apache-2.0 (facebookresearch/dino)"
BASE_URL = "https://dl.fbaipublicfiles.com/dino"

# DINO's eval_linear.py / eval_knn.py: Resize(256, interpolation=3 (bicubic)), CenterCrop(224).
NATIVE = Preprocessing("dino-eval", size=224, resize_to=256, interpolation="bicubic")

BOTTLENECK = 256
LAST_LAYER = "head.last_layer."
TEACHER_NOTE = (
    "the teacher of the full training checkpoint; its prototype layer (head.last_layer) is not used"
)


def _source(name: str, folder: str, description: str) -> WeightSource:
    return WeightSource(
        name=name,
        url=f"{BASE_URL}/{folder}/{folder}_full_checkpoint.pth",
        license=LICENSE,
        description=description,
        notes=TEACHER_NOTE,
    )


# ``resnet50`` is the name the released RCDM checkpoints record for their encoder weights.
RESNET50 = _source(
    "resnet50", "dino_resnet50_pretrain", "DINO ResNet-50 teacher (75.3% linear top-1), the weights RCDM used"
)
VITS16 = _source("vits16", "dino_deitsmall16_pretrain", "DINO ViT-S/16 teacher (77.0% linear top-1)")
VITB16 = _source("vitb16", "dino_vitbase16_pretrain", "DINO ViT-B/16 teacher (78.2% linear top-1)")


def _found(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return ", ".join(sorted(map(str, obj))[:8])
    return type(obj).__name__


def teacher_state(path: Path) -> dict[str, Any]:
    """The teacher's state dict, without the prototype layer (``head.last_layer.*``),
    from a DINO full checkpoint or from a file holding the teacher alone."""
    checkpoint = load_torch_file(path)
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("teacher"), Mapping):
        teacher = checkpoint["teacher"]
    elif is_state_dict(checkpoint):
        teacher = checkpoint
    else:
        raise RcdmError(
            f"{path} is not a DINO checkpoint: it has no 'teacher' state dict and is not one itself "
            f"(found: {_found(checkpoint)}); the published *_full_checkpoint.pth file (student, teacher, "
            "optimizer, ...) or a teacher state dict (backbone.*, head.mlp.*) is expected"
        )
    state = drop_common_prefix(teacher, "module.")
    if not any(str(k).startswith("backbone.") for k in state):
        raise RcdmError(
            f"{path} holds no backbone.* keys (found: {_found(state)}): not a DINO teacher; a backbone-only "
            "release has no projection head, so the published *_full_checkpoint.pth file is needed"
        )
    return {k: v for k, v in state.items() if not k.startswith(LAST_LAYER)}


class DinoHead(nn.Module):
    """DINO's projection head up to the bottleneck (``mlp``), the teacher's ``head.mlp.*``.
    Its output is the ``head`` layer: no L2 normalisation, no prototypes."""

    def __init__(self, mlp_: nn.Sequential):
        super().__init__()
        self.mlp = mlp_

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def load_teacher(net: nn.Module, path: Path | None) -> nn.Module:
    """Load the teacher of ``path`` into ``net``, whose keys are the file's own
    (``backbone.*``, ``head.mlp.*``), so an error names a key as the file spells it."""
    if path is not None:
        load_strict(net, teacher_state(path), f"{path} (teacher)")
    return net


# --- ResNet-50 ----------------------------------------------------------------------


class DinoResNet50(nn.Module):
    """torchvision-layout ResNet-50 (``backbone.*``, no classifier) and DINO's head:
    Linear(2048, 4096), BatchNorm1d, GELU, Linear(4096, 256) (``head.mlp.0/1/3``)."""

    def __init__(self):
        super().__init__()
        self.backbone = resnet50_trunk()
        self.head = DinoHead(mlp([2048, 4096, BOTTLENECK], batch_norm=True, activation=nn.GELU))

    def forward(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        if layer == "layer3":
            return global_pool(resnet_stages(self.backbone, x, "layer3")["layer3"])
        pooled = global_pool(resnet_stages(self.backbone, x)["layer4"])
        return pooled if layer == "backbone" else self.head(pooled)


def build_resnet50(request: BuildRequest) -> nn.Module:
    return load_teacher(DinoResNet50(), request.weights_path)


# --- ViTs ---------------------------------------------------------------------------


class DinoViT(nn.Module):
    """A timm ViT with DINO's settings (``backbone.*``) and DINO's head: Linear(dim, 2048),
    GELU, Linear(2048, 2048), GELU, Linear(2048, 256) (``head.mlp.0/2/4``)."""

    def __init__(self, arch: str, dim: int):
        super().__init__()
        import timm  # on use: listing encoders must not pay for its import

        self.backbone = timm.create_model(
            arch,
            pretrained=False,
            num_classes=0,
            global_pool="token",
            class_token=True,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        if self.backbone.num_features != dim:  # pragma: no cover - a timm change
            raise RcdmError(f"timm's {arch} has width {self.backbone.num_features}, expected {dim}")
        self.head = DinoHead(mlp([dim, 2048, 2048, BOTTLENECK], activation=nn.GELU))

    def forward(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        cls = self.backbone.forward_features(x)[:, 0]  # the class token after the final norm
        return cls if layer == "backbone" else self.head(cls)


def _vit_builder(arch: str, dim: int):
    def build(request: BuildRequest) -> nn.Module:
        return load_teacher(DinoViT(arch, dim), request.weights_path)

    return build


def _vit_layers(dim: int) -> dict[str, tuple[int, str]]:
    return {
        "backbone": Layer(dim, "class token after the final LayerNorm"),
        "head": Layer(BOTTLENECK, "projection-head bottleneck, before DINO's L2 normalisation and prototypes"),
    }


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="dino",
            description="DINO ResNet-50 (teacher), the encoder of the released RCDM dino models",
            build=build_resnet50,
            layers={
                "backbone": Layer(2048, "global-average-pooled layer4 features (released dino-backbone)"),
                "layer3": Layer(1024, "global-average-pooled layer3 features"),
                "head": (
                    BOTTLENECK,
                    "projection-head bottleneck, before DINO's L2 normalisation and prototypes (released dino-head)",
                ),
            },
            weights=(RESNET50,),
            preprocessing=NATIVE,
        )
    )
    register(
        EncoderSpec(
            name="dino-vits16",
            description="DINO ViT-S/16 (teacher)",
            build=_vit_builder("vit_small_patch16_224", 384),
            layers=_vit_layers(384),
            weights=(VITS16,),
            preprocessing=NATIVE,
        )
    )
    register(
        EncoderSpec(
            name="dino-vitb16",
            description="DINO ViT-B/16 (teacher)",
            build=_vit_builder("vit_base_patch16_224", 768),
            layers=_vit_layers(768),
            weights=(VITB16,),
            preprocessing=NATIVE,
        )
    )
