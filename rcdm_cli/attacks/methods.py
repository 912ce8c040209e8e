"""Adversarial attacks by name, from torchattacks, with their parameters passed through.

Every torchattacks attack that takes a classifier and images in [0, 1] is selectable
by its lower-cased class name (``pgd``, ``pgdl2``, ``autoattack``, ...). The common
options (eps, alpha, steps) reach the attacks that have such parameters; anything
else goes through ``--param key=value``, converted to the type of the parameter's
default.
"""

from __future__ import annotations

import inspect
from fractions import Fraction
from typing import Any

import torch
import torchattacks
from torch import nn

from rcdm_cli.errors import UsageError

# Attacks that need more than (model, images in [0, 1], labels): several models,
# surrogate training data, or a wrapper around other attacks.
_EXCLUDED = {"MultiAttack", "LGV", "VANILA"}
DOCUMENTED = ("fgsm", "pgd", "pgdl2", "cw", "deepfool", "autoattack", "square")


def available() -> dict[str, type]:
    out = {}
    for name in dir(torchattacks):
        cls = getattr(torchattacks, name)
        if inspect.isclass(cls) and issubclass(cls, torchattacks.attack.Attack) and name != "Attack" and name not in _EXCLUDED:
            out[name.lower()] = cls
    return dict(sorted(out.items()))


def parse_size(text: str | float, what: str = "size") -> float:
    """``8/255``, ``0.03`` or ``1e-2`` as a float."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{what} {text!r} is not a number such as 8/255 or 0.03") from None


def _convert(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise UsageError(f"--param {name} expects true or false, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"--param {name} expects an integer, got {raw!r}") from None
    if isinstance(default, float) or default is None and any(c.isdigit() for c in raw):
        return parse_size(raw, f"--param {name}")
    return raw


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def build_attack(
    method: str,
    model: nn.Module,
    *,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    n_classes: int | None = None,
    seed: int = 0,
    params: dict[str, str] | None = None,
):
    """A torchattacks attack on ``model``; returns (attack, the parameters used)."""
    attacks = available()
    cls = attacks.get(method.lower())
    if cls is None:
        raise UsageError(f"unknown attack {method!r}; choose one of: {', '.join(attacks)}")
    signature = inspect.signature(cls.__init__)
    accepted = {k: p.default for k, p in signature.parameters.items() if k not in ("self", "model")}
    chosen: dict[str, Any] = {}
    for key, value in (("eps", eps), ("alpha", alpha), ("steps", steps)):
        if value is not None and key in accepted:
            chosen[key] = value
    if n_classes is not None and "n_classes" in accepted:
        chosen["n_classes"] = n_classes
    if "seed" in accepted:
        chosen["seed"] = seed
    for key, raw in (params or {}).items():
        if key not in accepted:
            raise UsageError(f"{method} has no parameter {key!r}; it takes: {', '.join(accepted)}")
        chosen[key] = _convert(key, raw, accepted[key])
    try:
        attack = cls(model, **chosen)
    except (TypeError, ValueError, AssertionError) as exc:
        raise UsageError(f"{method}: {exc}") from None
    used = {k: chosen.get(k, accepted[k]) for k in accepted if not callable(accepted[k])}
    return attack, {k: v for k, v in used.items() if isinstance(v, (int, float, str, bool)) or v is None}


def norm_of(method: str, used: dict[str, Any]) -> str | None:
    """Which ball the attack stays in: "Linf", "L2", or None for minimal-norm attacks
    (CW, DeepFool, ...) that have no budget."""
    if "norm" in used:
        return str(used["norm"])
    if "eps" not in used:
        return None
    return "L2" if method.lower().endswith("l2") else "Linf"


def perturbation_norm(delta: torch.Tensor, norm: str | None) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "L2":
        return flat.norm(dim=1)
    return flat.abs().max(dim=1).values
