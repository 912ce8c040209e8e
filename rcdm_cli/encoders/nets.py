"""Network pieces that many encoders share: a torchvision-layout ResNet-50 trunk and
MLP projection heads. Public, so third-party plugins build on them as the built-in
ones do."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn


def resnet50_trunk() -> nn.Module:
    """ResNet-50 with torchvision's parameter names (``conv1``, ``bn1``,
    ``layer1.0.conv1`` ... ``layer4.2.bn3``, ``downsample.0/1``) and no classifier.

    Initialised as torchvision's ``resnet50()`` is: Kaiming-normal convolutions
    (fan-out), every batch norm at scale 1 and shift 0. timm's default would zero the
    last batch norm of every residual branch (``zero_init_last``), which makes an
    untrained network the identity on its shortcuts; loading weights replaces all of
    it anyway, but the untrained baseline must be a live network."""
    import timm  # imported on use: it brings torchvision, seconds at every start

    return timm.create_model("resnet50", pretrained=False, num_classes=0, zero_init_last=False)


def resnet_stages(trunk: nn.Module, x: torch.Tensor, upto: str = "layer4") -> dict[str, torch.Tensor]:
    """Feature maps after each stage of a ResNet trunk, stopping after ``upto``."""
    x = trunk.maxpool(trunk.act1(trunk.bn1(trunk.conv1(x))))
    out = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(trunk, name)(x)
        out[name] = x
        if name == upto:
            break
    return out


def global_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


def mlp(
    dims: list[int],
    *,
    bias: bool = True,
    last_bias: bool | None = None,
    batch_norm: bool = False,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]``, each hidden one followed by an
    optional BatchNorm1d and the activation: the layout of the SimCLR, VICReg, Barlow
    Twins, BYOL and SwAV projectors, with ``nn.Sequential``'s numbering of the keys."""
    layers: list[nn.Module] = []
    last = len(dims) - 2
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out, bias=bias if i < last or last_bias is None else last_bias))
        if i < last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(activation())
    return nn.Sequential(*layers)


class ResNetWithHeads(nn.Module):
    """A ResNet-50 trunk (``trunk.*``) and named heads on its pooled features.

    Layers: ``backbone`` (pooled layer4, 2048), ``layer3`` (pooled layer3, 1024), and
    one per head: ``head`` for the projector, plus any extra (``logits``,
    ``prototypes``) computed from another layer's output as ``sources`` says.
    ``normalize`` names layers whose output is L2-normalised before it is returned
    or passed on (as SwAV normalises its projection before the prototypes).
    """

    def __init__(
        self,
        trunk: nn.Module,
        heads: Mapping[str, nn.Module] | None = None,
        sources: Mapping[str, str] | None = None,
        normalize: tuple[str, ...] = (),
    ):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(dict(heads or {}))
        self.sources = dict(sources or {})
        self.normalize = set(normalize)

    def forward(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        if layer == "layer3":
            return global_pool(resnet_stages(self.trunk, x, "layer3")["layer3"])
        feats = global_pool(resnet_stages(self.trunk, x)["layer4"])
        return self._layer(layer, feats)

    def _layer(self, layer: str, backbone: torch.Tensor) -> torch.Tensor:
        if layer == "backbone":
            out = backbone
        else:
            source = self.sources.get(layer, "backbone")
            out = self.heads[layer](self._layer(source, backbone))
        return F.normalize(out, dim=1) if layer in self.normalize else out


def uninitialized(factory: Callable[[], nn.Module], device: str = "cpu") -> nn.Module:
    """``factory()`` with allocated but unset tensors. For layers that strict loading
    fills entirely, this skips a random initialisation that is thrown away (seconds for
    the 150 M-parameter projectors of VICReg and Barlow Twins)."""
    with torch.device("meta"):
        module = factory()
    return module.to_empty(device=device)
