"""SwAV (Caron et al. 2020): a ResNet-50 trained by swapping cluster assignments
between views, with its projection head and prototypes.

``head`` is the 128-d projection, L2-normalised because SwAV compares it with its
prototypes on the unit sphere; ``prototypes`` are the scores against the 3000
prototypes computed from that normalised projection, the quantity SwAV's
Sinkhorn-Knopp assignment works on. The prototype weights are used exactly as stored:
SwAV renormalises them at the start of each training step, so the saved rows are only
approximately unit-norm, and renormalising them here would give scores the trained
network never computed.

The published file is a flat state dict whose keys all carry DistributedDataParallel's
``module.`` prefix. SwAV's own training checkpoints (``checkpoint.pth.tar``) hold the
same keys under ``state_dict`` beside the optimizer state; those are accepted too, as
are the keys without ``module.``, and the encoder's own ``state_dict()`` (``trunk.*``,
``heads.head.*``, ``heads.prototypes.*``), as ``.pth`` or safetensors. Each form is
loaded under its own names, so an error names a key as the file spells it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from rcdm_cli.encoders.nets import ResNetWithHeads, mlp, resnet50_trunk
from rcdm_cli.encoders.weights import subtree
from rcdm_cli.plugin import (
    IMAGENET_MEAN,
    BuildRequest,
    EncoderSpec,
    Layer,
    Preprocessing,
    RcdmError,
    WeightSource,
    hookimpl,
    load_strict,
    load_torch_file,
)

SWAV_LICENSE = "CC-BY-NC-4.0 (SwAV)"

# SwAV's evaluation code uses 0.228 for the red channel's std, not ImageNet's usual 0.229.
SWAV_PREPROCESSING = Preprocessing("swav", mean=IMAGENET_MEAN, std=(0.228, 0.224, 0.225))

EP800 = WeightSource(
    name="800ep",
    url="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
    license=SWAV_LICENSE,
    description="SwAV ResNet-50, 800 epochs with multi-crop (75.3% ImageNet linear top-1)",
    notes=(
        "a flat state dict, every key prefixed 'module.', with the projection head and the "
        "3000 prototypes; the file torch hub's facebookresearch/swav resnet50 loads"
    ),
)

LAYERS = {
    "backbone": Layer(2048, "global-average-pooled layer4 features"),
    "layer3": Layer(1024, "global-average-pooled layer3 features"),
    "head": Layer(128, "projection head output (2048-2048-128 MLP with batch norm), L2-normalised"),
    "prototypes": Layer(3000, "scores against the 3000 prototypes (normalised head output, prototype weights as stored)"),
}

HIDDEN, OUT, N_PROTOTYPES = 2048, 128, 3000


def swav_network() -> ResNetWithHeads:
    return ResNetWithHeads(
        resnet50_trunk(),
        heads={
            "head": mlp([2048, HIDDEN, OUT], batch_norm=True),
            "prototypes": nn.Linear(OUT, N_PROTOTYPES, bias=False),
        },
        sources={"prototypes": "head"},
        normalize=("head",),
    )


def published_view(net: ResNetWithHeads) -> nn.Module:
    """The network's own modules arranged under the file's key names
    (``module.layer1.0.conv1.weight``, ``module.projection_head.0.weight``,
    ``module.prototypes.weight``). Loading into it fills ``net``, and a strict-loading
    error names each key exactly as the file spells it.

    SwAV's stem (a one-pixel zero pad, then a 7x7 convolution with padding 2) computes
    what torchvision's padding-3 convolution does and has the same parameters, so the
    trunk takes the file's keys unchanged.
    """
    inner = nn.Module()
    for name, child in net.trunk.named_children():
        inner.add_module(name, child)
    inner.add_module("projection_head", net.heads["head"])
    inner.add_module("prototypes", net.heads["prototypes"])
    view = nn.Module()
    view.add_module("module", inner)
    return view


OWN_PREFIXES = ("trunk.", "heads.")


def target_view(net: ResNetWithHeads, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The module whose names ``state`` uses: the published file's (``module.*``), the
    same without the prefix, or the encoder's own. Chosen by most keys, so that the
    odd key out is the one reported."""
    def share(prefixes: tuple[str, ...]) -> float:
        return sum(str(k).startswith(prefixes) for k in state) / max(len(state), 1)

    view = published_view(net)
    if share(OWN_PREFIXES) > 0.5:
        return net
    return view if share(("module.",)) > 0.5 else view.module


def published_state(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    """The weights of a released file, or of a training checkpoint's ``state_dict``."""
    if not isinstance(obj, Mapping):
        raise RcdmError(f"{path} holds a {type(obj).__name__}, not SwAV's state dict")
    state = subtree(obj, "state_dict", source=str(path)) if "state_dict" in obj else obj
    if not isinstance(state, Mapping):
        raise RcdmError(f"{path}: state_dict is a {type(state).__name__}, not a mapping of tensors")
    odd = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise RcdmError(f"{path}: not SwAV's state dict, these entries are not tensors: {', '.join(odd[:5])}")
    return state


def build(request: BuildRequest) -> nn.Module:
    if request.weights_path is None:
        raise RcdmError("swav needs its weights file")
    net = swav_network()
    path = Path(request.weights_path)
    state = published_state(load_torch_file(path), path)
    load_strict(target_view(net, state), state, str(path))
    return net


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="swav",
            description="ResNet-50 trained with SwAV (online clustering with swapped assignments)",
            build=build,
            layers=dict(LAYERS),
            weights=(EP800,),
            preprocessing=SWAV_PREPROCESSING,
        )
    )
