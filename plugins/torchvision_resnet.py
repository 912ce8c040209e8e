"""Supervised ImageNet ResNet-50 (torchvision's weights) and an untrained ResNet-50.

``supervised`` is the encoder of the released ``supervised`` RCDM model, which used
torchvision's original (V1) weights; V2 (the improved training recipe) is
``supervised@v2``. ``random`` is the paper's untrained baseline: a ResNet-50 with
torchvision's default initialisation (Kaiming-normal convolutions, batch norms at
scale 1 and shift 0, so every residual branch is live) from a fixed seed.

``--weights`` for ``supervised`` takes torchvision's file (``conv1.weight`` ...
``fc.bias``) as a ``.pth`` or safetensors file, also inside a ``state_dict`` or
``model`` entry or with DistributedDataParallel's ``module.`` prefix, or this
encoder's own ``state_dict()`` (``trunk.*``, ``heads.logits.*``).
"""

from __future__ import annotations

import torch
from torch import nn

from rcdm_cli.encoders.nets import ResNetWithHeads, resnet50_trunk
from rcdm_cli.encoders.weights import rename_keys
from rcdm_cli.plugin import (
    BuildRequest,
    EncoderSpec,
    Layer,
    Preprocessing,
    UsageError,
    WeightSource,
    drop_common_prefix,
    find_state_dict,
    hookimpl,
    load_strict,
    load_torch_file,
)

TORCHVISION_LICENSE = "BSD-3-Clause (torchvision)"

V1 = WeightSource(
    name="v1",
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    license=TORCHVISION_LICENSE,
    description="torchvision IMAGENET1K_V1 (76.1% top-1), the weights RCDM used",
    sha256_prefix="0676ba61",
)
V2 = WeightSource(
    name="v2",
    url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    license=TORCHVISION_LICENSE,
    description="torchvision IMAGENET1K_V2 (80.9% top-1)",
    sha256_prefix="11ad3fa6",
    preprocessing=Preprocessing("imagenet-232", resize_to=232),
)

RESNET_LAYERS = {
    "backbone": Layer(2048, "global-average-pooled layer4 features"),
    "layer3": Layer(1024, "global-average-pooled layer3 features"),
}


OWN_PREFIXES = ("trunk.", "heads.")


def supervised_state(path) -> dict[str, torch.Tensor]:
    """The weights of ``path`` under the network's names (``trunk.*``, ``heads.logits.*``)."""
    state = find_state_dict(
        load_torch_file(path), ("state_dict", "model"), str(path),
        "a state dict of torchvision's ResNet-50 (conv1.weight ... fc.bias)",
    )
    state = drop_common_prefix(state, "module.")
    if any(k.startswith(OWN_PREFIXES) for k in state):  # this encoder's own state_dict()
        return state
    return rename_keys(state, [("fc.", "heads.logits."), ("", "trunk.")])


def build_supervised(request: BuildRequest) -> nn.Module:
    net = ResNetWithHeads(resnet50_trunk(), heads={"logits": nn.Linear(2048, 1000)})
    if request.weights_path is not None:
        load_strict(net, supervised_state(request.weights_path), str(request.weights_path))
    return net


def build_random(request: BuildRequest) -> nn.Module:
    if request.weights_path is not None:
        raise UsageError("the random encoder is untrained and takes no weights file: drop --weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(request.seed)
        return ResNetWithHeads(resnet50_trunk())


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="supervised",
            description="ResNet-50 trained with ImageNet labels (torchvision)",
            build=build_supervised,
            layers={**RESNET_LAYERS, "logits": Layer(1000, "ImageNet class logits")},
            weights=(V1, V2),
        )
    )
    register(
        EncoderSpec(
            name="random",
            description="untrained ResNet-50, torchvision's default initialisation from seed 0 (the paper's baseline)",
            build=build_random,
            layers=dict(RESNET_LAYERS),
        )
    )
