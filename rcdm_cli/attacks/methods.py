"""Adversarial attacks by name, from torchattacks, with their parameters passed through.

Every torchattacks attack that takes a classifier and images in [0, 1] is selectable
by its lower-cased class name (``pgd``, ``pgdl2``, ``autoattack``, ...). Each keeps its
own defaults: ``--eps``, ``--alpha`` and ``--attack-steps`` reach an attack only when the
user gives them, so ``pgdl2`` keeps its L2 budget of 1.0 and ``cw`` its 50 steps.
Anything else goes through ``--param key=value``.

A request is checked in full (names, values, norm, targeted mode) by building the
attack once on a stand-in model, before any weights are loaded; errors the attack
raises later, while it runs, are still reported as the user's parameters being wrong.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
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
NORMS = ("Linf", "L2")
# The same attack in the other ball, for ``--norm``.
TWINS = {("pgd", "L2"): "pgdl2", ("pgdl2", "Linf"): "pgd", ("pgdrs", "L2"): "pgdrsl2", ("pgdrsl2", "Linf"): "pgdrs"}
# Parameters that are a size or a count: zero or negative values make no attack.
_POSITIVE = ("eps", "alpha", "steps", "max_epsilon")
# What the parameters of an attack raise, at construction or while it runs, when a
# value is one it does not accept (torchattacks checks with bare asserts, or not at all).
PARAMETER_ERRORS = (ValueError, AssertionError, TypeError, ZeroDivisionError)
_INTEGER = re.compile(r"[+-]?\d+")
# Attacks whose margin takes the largest other logit with the label's entry set to 0.
_ZEROED_MARGIN = {"cw", "upgd"}


def available() -> dict[str, type]:
    out = {}
    for name in dir(torchattacks):
        cls = getattr(torchattacks, name)
        if inspect.isclass(cls) and issubclass(cls, torchattacks.attack.Attack) and name != "Attack" and name not in _EXCLUDED:
            out[name.lower()] = cls
    return dict(sorted(out.items()))


def attack_class(method: str) -> type:
    attacks = available()
    cls = attacks.get(method.lower())
    if cls is None:
        raise UsageError(f"unknown attack {method!r}; choose one of: {', '.join(attacks)}")
    return cls


def defaults(method: str) -> dict[str, Any]:
    """The constructor parameters of an attack with their defaults, the model aside."""
    signature = inspect.signature(attack_class(method).__init__)
    return {k: p.default for k, p in signature.parameters.items() if k not in ("self", "model")}


def parse_size(text: str | float, what: str = "size") -> float:
    """``8/255``, ``0.03`` or ``1e-2`` as a float."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        try:
            value = float(Fraction(text.strip())) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"{what} {text!r} is not a number such as 8/255 or 0.03") from None
    if not math.isfinite(value):
        raise UsageError(f"{what} must be a finite number such as 8/255 or 0.03, got {text!r}")
    return value


def parse_number(text: str, what: str) -> int | float:
    """A number in the form it is written: ``5`` an int, ``0.5`` or ``8/255`` a float.
    The attack's default does not decide the type: CW's ``c`` defaults to the int 1
    but takes any positive float."""
    if _INTEGER.fullmatch(text.strip()):
        return int(text)
    return parse_size(text, what)


def _convert(name: str, raw: str, default: Any) -> Any:
    """A ``--param`` value, read the way the parameter's default suggests."""
    what = f"--param {name}"
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise UsageError(f"{what} expects true or false, got {raw!r}")
    if isinstance(default, (int, float)):
        return parse_number(raw, what)
    if isinstance(default, tuple):
        return tuple(parse_number(part, what) for part in raw.split(","))
    if default is None:
        if raw.lower() == "none":
            return None
        try:
            return parse_number(raw, what)
        except UsageError:
            return raw
    return raw


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects key=value, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def budget_norm(method: str, used: dict[str, Any]) -> str | None:
    """The ball the attack stays in: "Linf", "L2" (or another norm an attack names),
    or None for minimum-norm attacks (CW, DeepFool, ...) that have no budget."""
    if "norm" in used:
        return str(used["norm"])
    if "eps" not in used and "max_epsilon" not in used:
        return None
    return "L2" if method.lower().endswith("l2") else "Linf"


def budget_of(method: str, used: dict[str, Any]) -> dict[str, Any] | None:
    norm = budget_norm(method, used)
    if norm is None:
        return None
    return {"norm": norm, "eps": float(used["eps"] if "eps" in used else used["max_epsilon"])}


def methods_in_ball(norm: str) -> list[str]:
    """Attacks whose budget can be an ``norm`` ball, for messages."""
    out = []
    for name in available():
        params = defaults(name)
        if "norm" in params or budget_norm(name, params) == norm:
            out.append(name)
    return out


def targeted_methods() -> list[str]:
    out = []
    for name, cls in available().items():
        try:
            if "targeted" in cls(_stand_in(10)).supported_mode:
                out.append(name)
        except Exception:  # an attack that cannot even be built with its defaults is not offered
            continue
    return out


class PositiveLogits(nn.Module):
    """The classifier's logits shifted per image so that all are positive.

    torchattacks' CW margin takes the largest other logit after zeroing the label's
    entry, so when every other logit is negative it finds the 0 and treats the image
    as already adversarial: the attack returns it unchanged. A per-image constant
    changes neither the predicted class nor any logit difference (the margin CW
    minimises, and its gradient), so the shift only removes that failure."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return z - z.min(dim=1, keepdim=True).values + 1


def _stand_in(n_classes: int) -> nn.Module:
    """A tiny classifier to build attacks on while checking a request."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, n_classes))


def resolve_norm(method: str, norm: str | None, params: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``--norm`` for the classifier objective: passed to attacks with a ``norm``
    parameter, mapped to the twin attack (``pgd`` in L2 is ``pgdl2``), refused where it
    cannot apply, so that it is never silently ignored."""
    if norm is None:
        return method, params
    if norm not in NORMS:
        raise UsageError(f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    accepted = defaults(method)
    if "norm" in accepted:
        if "norm" in params and params["norm"] != norm:
            raise UsageError(f"--norm {norm} contradicts --param norm={params['norm']}; give one of them")
        return method, {**params, "norm": norm}
    ball = budget_norm(method, accepted)
    if ball is None:
        raise UsageError(
            f"{method} has no budget ball (it looks for a small perturbation on its own), so --norm does not apply; "
            f"attacks with an {norm} budget: {', '.join(methods_in_ball(norm))}"
        )
    if ball == norm:
        return method, params
    twin = TWINS.get((method, norm))
    if twin is not None:
        return twin, params
    raise UsageError(f"{method} attacks in an {ball} ball; for an {norm} budget choose one of: {', '.join(methods_in_ball(norm))}")


@dataclass(frozen=True)
class AttackSpec:
    """A checked torchattacks request: which attack, with which constructor
    arguments; ``used`` holds every parameter with its effective value."""

    method: str
    kwargs: dict[str, Any]
    used: dict[str, Any]
    given: dict[str, Any] = field(default_factory=dict)
    targeted: bool = False

    @property
    def budget(self) -> dict[str, Any] | None:
        return budget_of(self.method, self.used)

    def build(self, model: nn.Module):
        cls = attack_class(self.method)
        if self.method in _ZEROED_MARGIN:
            model = PositiveLogits(model)
        try:
            attack = cls(model, **self.kwargs)
        except PARAMETER_ERRORS as exc:
            raise self.error(exc) from exc
        if self.targeted:
            if "targeted" not in attack.supported_mode:
                raise UsageError(
                    f"{self.method} has no targeted mode, so --target-class does not apply; "
                    f"attacks that can be targeted: {', '.join(targeted_methods())}"
                )
            attack.set_mode_targeted_by_label(quiet=True)
        return attack

    def run(self, attack, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        try:
            return attack(images, labels).detach()
        except PARAMETER_ERRORS as exc:
            raise self.error(exc) from exc

    def error(self, exc: BaseException) -> UsageError:
        """The attack refused its parameters: name the method and the values the
        user chose, since one of them is the cause."""
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else f"{type(exc).__name__} without a message"
        chosen = ", ".join(f"{k}={v!r}" for k, v in self.given.items()) or "its defaults"
        return UsageError(f"{self.method} rejected its parameters ({chosen}): {reason}; see torchattacks' documentation of {self.method}")


def plan_attack(
    method: str,
    *,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    norm: str | None = None,
    params: dict[str, str] | None = None,
    n_classes: int | None = None,
    seed: int = 0,
    targeted: bool = False,
) -> AttackSpec:
    """Check a request against the attack's signature, build it once on a stand-in
    model (so constructor errors and an unsupported targeted mode surface before any
    real work), and return what to build on the real classifier."""
    method = method.lower()
    attack_class(method)
    method, params = resolve_norm(method, norm, dict(params or {}))
    accepted = defaults(method)
    takes = ", ".join(accepted)
    chosen: dict[str, Any] = {}
    for key, option, value in (("eps", "--eps", eps), ("alpha", "--alpha", alpha), ("steps", "--attack-steps", steps)):
        if value is None:
            continue
        if key not in accepted:
            raise UsageError(f"{option} does not apply to {method}; it takes: {takes} (use --param for those)")
        if key in params:
            raise UsageError(f"{option} and --param {key} both set {method}'s {key}; give one of them")
        chosen[key] = value
    for key, raw in params.items():
        if key not in accepted:
            raise UsageError(f"{method} has no parameter {key!r}; it takes: {takes}")
        chosen[key] = _convert(key, raw, accepted[key])
    for key in _POSITIVE:
        value = chosen.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise UsageError(f"{method}'s {key} must be positive, got {value}")
    given = dict(chosen)
    if n_classes is not None and "n_classes" in accepted and "n_classes" not in chosen:
        chosen["n_classes"] = n_classes
    if "seed" in accepted and "seed" not in chosen:
        chosen["seed"] = seed
    used = {k: chosen.get(k, accepted[k]) for k in accepted if not callable(accepted[k])}
    used = {k: v for k, v in used.items() if isinstance(v, (int, float, str, bool, tuple)) or v is None}
    spec = AttackSpec(method, chosen, used, given, targeted)
    spec.build(_stand_in(n_classes or 10))
    return spec


def build_attack(method: str, model: nn.Module, **request):
    """A torchattacks attack on ``model``; returns (attack, the parameters used)."""
    spec = plan_attack(method, **request)
    return spec.build(model), spec.used


def perturbation_norms(delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both norms of each image's perturbation: budgets are L-inf or L2, and
    minimum-norm attacks (CW, DeepFool) minimise L2."""
    flat = delta.flatten(1).double()
    return {"linf": flat.abs().max(dim=1).values, "l2": flat.norm(dim=1)}
