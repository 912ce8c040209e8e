"""Synthetic checkpoints in the exact layout of published ones: same nesting, key
names and shapes, small random values (no download is possible in tests)."""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from contextlib import contextmanager

import torch

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
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


def bn_shapes(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    """A batch norm's keys and shapes under ``prefix``."""
    shapes = {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")}
    return {**shapes, f"{prefix}.num_batches_tracked": ()}


def square_weight(gen: torch.Generator, n: int = 8192, distinct: int = 1024) -> torch.Tensor:
    """An n x n Linear weight made quickly: ``distinct`` random rows repeated, every
    row with its own random scale, so no two output units are equal."""
    rows = torch.randn(distinct, n, generator=gen).repeat(n // distinct, 1)
    return rows.mul_((1.0 + 0.2 * torch.rand(n, 1, generator=gen)) / n**0.5)


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


# VISSL's training state, in which its model zoo publishes SimCLR and Barlow Twins.


def _sgd_state(trunk, heads) -> dict:
    """A torch SGD state dict: one momentum buffer per parameter (stored as the
    parameter itself, so the file stays small) and one param group."""
    params = [v for k, v in [*trunk.items(), *heads.items()] if not k.endswith(BUFFERS)]
    return {
        "state": {i: {"momentum_buffer": p} for i, p in enumerate(params)},
        "param_groups": [
            {"lr": 0.0, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-6, "nesterov": False, "params": list(range(len(params)))}
        ],
    }


def simclr_vissl_checkpoint(trunk, heads) -> dict:
    """SimCLR's model_final_checkpoint_phase999.torch: VISSL's training state with
    the network under classy_state_dict/base_model/model as trunk and heads."""
    return {
        "phase_idx": 1999,
        "iteration": 1250000,
        "loss": OrderedDict(),
        "iteration_num": 1250000,
        "train_phase_idx": 999,
        "classy_state_dict": {
            "train": True,
            "base_model": {"model": {"trunk": trunk, "heads": heads}},
            "meters": [],
            "optimizer": {"optim": _sgd_state(trunk, heads)},
            "phase_idx": 1999,
            "train_phase_idx": 999,
            "num_updates": 5120000,
            "losses": [6.21, 6.19],
            "hooks": {},
            "loss": {},
            "train_dataset_iterator": {},
        },
    }


@contextmanager
def vissl_lars_importable():
    """VISSL's ``_LARS`` class where pickle looks for it, so that its filter is
    written by reference exactly as in the published file: protocol 2 cannot name
    a nested attribute, so it writes ``getattr(_LARS, "_exclude_bias_and_norm")``."""

    class _LARS:
        @staticmethod
        def _exclude_bias_and_norm(p):
            return p.ndim == 1

        @staticmethod
        def step(p):
            return p

    module_name = "vissl.optimizers.lars"
    _LARS.__module__, _LARS.__qualname__ = module_name, "_LARS"
    for fn in (_LARS._exclude_bias_and_norm, _LARS.step):
        fn.__module__, fn.__qualname__ = module_name, f"_LARS.{fn.__name__}"
    names = ("vissl", "vissl.optimizers", module_name)
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    modules[module_name]._LARS = _LARS
    sys.modules.update(modules)
    try:
        yield _LARS
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _parameters(*states) -> list[torch.Tensor]:
    return [v for state in states for k, v in state.items() if not k.endswith(BUFFERS)]


def barlow_vissl_checkpoint(trunk, heads, exclude) -> dict:
    """barlow_twins_..._resnet50.torch's nesting: VISSL's training state with the
    network under classy_state_dict/base_model/model, LARS state (momentum buffers
    stored as the parameters themselves, so the file stays small) whose param group
    holds the filter, and the AMP grad scaler's state."""
    params = _parameters(trunk, heads)
    optim = {
        "state": {i: {"momentum_buffer": p} for i, p in enumerate(params)},
        "param_groups": [
            {"lr": 0.0, "momentum": 0.9, "weight_decay": 1.5e-6, "eta": 0.001, "exclude": exclude, "params": list(range(len(params)))}
        ],
    }
    return {
        "phase_idx": 999,
        "iteration": 625000,
        "loss": OrderedDict(),
        "iteration_num": 625000,
        "train_phase_idx": 999,
        "classy_state_dict": {
            "train": True,
            "base_model": {"model": {"trunk": trunk, "heads": heads}},
            "meters": [],
            "optimizer": {"optim": optim},
            "phase_idx": 999,
            "train_phase_idx": 999,
            "num_updates": 625000,
            "losses": [1520.3, 1519.8],
            "hooks": {},
            "loss": {},
            "train_dataset_iterator": {},
            "amp": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 12},
        },
    }
