"""TensorFlow's 'SAME' padding for a torchvision-layout ResNet.

Haiku (and TensorFlow) pad every convolution and max-pool just enough for
``ceil(size / stride)`` outputs, the odd row and column going at the bottom and
right; PyTorch pads both sides equally. A network trained one way gives other
features when run the other way, so encoders trained in Haiku swap their layers for
these ones, which keep the parameters' names and shapes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding of one spatial dimension: just enough for
    ``ceil(size / stride)`` outputs, the odd pixel going after, not before."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pads(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int, int, int]:
    top, bottom = same_pads(x.shape[-2], kernel[0], stride[0])
    left, right = same_pads(x.shape[-1], kernel[1], stride[1])
    return left, right, top, bottom


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


class SameConv2d(nn.Conv2d):
    """A convolution padded per input size, as Haiku's ``padding='SAME'`` is; same
    parameters (and state-dict keys) as the ``nn.Conv2d`` it replaces."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x, self.kernel_size, self.stride)
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameMaxPool2d(nn.MaxPool2d):
    """Max-pooling with 'SAME' padding: padded cells never win (they are -inf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = _pair(self.kernel_size), _pair(self.stride)
        pads = _pads(x, kernel, stride)
        if any(pads):
            x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(x, kernel, stride)


def pad_like_tensorflow(trunk: nn.Module) -> None:
    """Swap every convolution and max-pool of a torchvision-layout trunk for its 'SAME'
    counterpart, keeping parameter names and shapes."""
    for name, module in list(trunk.named_modules()):
        if isinstance(module, nn.Conv2d):
            new: nn.Module = SameConv2d(
                module.in_channels, module.out_channels, module.kernel_size, module.stride,
                padding=0, dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
            )
        elif isinstance(module, nn.MaxPool2d):
            new = SameMaxPool2d(module.kernel_size, module.stride)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(trunk.get_submodule(parent), child, new)
