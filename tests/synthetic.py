"""Synthetic checkpoints in the exact layout of published ones: same nesting, key
names and shapes, small random values (no download is possible in tests)."""

from __future__ import annotations

import torch

RESNET50_STAGES = ((64, 256, 3), (128, 512, 4), (256, 1024, 6), (512, 2048, 3))


def resnet50_shapes(with_fc: bool = False) -> dict[str, tuple[int, ...]]:
    """torchvision ResNet-50 state-dict keys and shapes, in torchvision's order."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    in_ch = 64
    for i, (mid, out, blocks) in enumerate(RESNET50_STAGES, start=1):
        for b in range(blocks):
            p = f"layer{i}.{b}"
            shapes[f"{p}.conv1.weight"] = (mid, in_ch, 1, 1)
            bn(f"{p}.bn1", mid)
            shapes[f"{p}.conv2.weight"] = (mid, mid, 3, 3)
            bn(f"{p}.bn2", mid)
            shapes[f"{p}.conv3.weight"] = (out, mid, 1, 1)
            bn(f"{p}.bn3", out)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (out, in_ch, 1, 1)
                bn(f"{p}.downsample.1", out)
            in_ch = out
    if with_fc:
        shapes["fc.weight"] = (1000, 2048)
        shapes["fc.bias"] = (1000,)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Plausible values: BN variances positive and near 1, counters integer, the rest
    small and random, so a wiring mistake changes the outputs."""
    if name.endswith("num_batches_tracked"):
        return torch.tensor(1000, dtype=torch.long)
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=gen)
    if name.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=gen)
    if len(shape) == 1 and name.endswith("weight"):  # BN / LayerNorm scale
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(shape, generator=gen) / max(fan_in, 1) ** 0.5


def state_from_shapes(shapes: dict[str, tuple[int, ...]], prefix: str = "", seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {prefix + k: random_tensor(k, s, gen) for k, s in shapes.items()}


def resnet50_state(prefix: str = "", with_fc: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    return state_from_shapes(resnet50_shapes(with_fc), prefix, seed)


# Damaged copies of a state dict, for the "refused, naming the key" tests.


def renamed(state, key):
    """``state`` with ``key`` renamed to ``key + "_renamed"``, order kept."""
    return type(state)((k + "_renamed" if k == key else k, v) for k, v in state.items())


def missing(state, key):
    return type(state)((k, v) for k, v in state.items() if k != key)


def reshaped(state, key):
    """``state`` with ``key``'s last dimension one larger."""
    out = type(state)(state)
    out[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    return out
