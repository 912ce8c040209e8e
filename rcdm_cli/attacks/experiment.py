"""The paper's adversarial experiment: does an adversarial perturbation change what a
representation says? Attack a classifier on the representation (or the
representation itself), then let RCDM draw from the clean and from the adversarial
representation with the same noise, and classify what it draws.

One [0, 1] image tensor is perturbed; the classifier sees it with the normalisation
the classifier was trained with, the RCDM with the one its checkpoint records. Both
share the encoder's network, so the attack acts on exactly the representation that
conditions the samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from rcdm_cli.attacks.methods import build_attack, norm_of, perturbation_norm
from rcdm_cli.attacks.representation import representation_pgd
from rcdm_cli.encoders import Encoder, EncoderName
from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.probe import Probe
from rcdm_cli.preprocessing import Preprocessing


class Normalized(nn.Module):
    """The encoder's network behind a given normalisation, at a given layer,
    optionally followed by a classification head."""

    def __init__(self, encoder: Encoder, preprocessing: Preprocessing, layer: str, head: Callable | None = None):
        super().__init__()
        self.encoder = encoder
        self.layer = layer
        self.head = head
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1).to(encoder.mean))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1).to(encoder.mean))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder.network((x - self.mean) / self.std, self.layer).flatten(1).float()
        return self.head(z) if self.head is not None else z


@dataclass
class Classifier:
    model: nn.Module
    classes: list[str]
    description: str

    def predict(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.model(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)])

    def name(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)


def _imagenet_names() -> list[str]:
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0] for i in range(1000)]
    except Exception:  # older timm: indices as names
        return [str(i) for i in range(1000)]


def build_classifier(encoder: Encoder, probe: Probe | None) -> Classifier:
    """The encoder's own classifier (a ``logits`` layer, e.g. ``supervised``) or a
    linear probe trained on one of its layers."""
    if probe is not None:
        recorded = probe.info.get("encoder")
        if recorded and EncoderName.parse(recorded).base != EncoderName.parse(encoder.name).base:
            raise UsageError(f"the probe was trained on {recorded} representations, not {encoder.name}")
        layer = probe.info.get("layer")
        if layer not in encoder.layers:
            raise UsageError(f"the probe is for layer {layer!r}, which {encoder.name} does not have")
        if encoder.layers[layer][0] != probe.weight.shape[1]:
            raise UsageError(f"the probe expects {probe.weight.shape[1]}-d features, {encoder.name}/{layer} gives {encoder.layers[layer][0]}")
        pre = Preprocessing.from_dict(probe.info["preprocessing"]) if "preprocessing" in probe.info else encoder.native_preprocessing
        head = probe.to(encoder.mean.device).logits
        return Classifier(Normalized(encoder, pre, layer, head), probe.classes, f"linear probe on {encoder.name}/{layer}")
    if "logits" in encoder.layers:
        n = encoder.layers["logits"][0]
        classes = _imagenet_names() if n == 1000 else [str(i) for i in range(n)]
        return Classifier(Normalized(encoder, encoder.native_preprocessing, "logits"), classes, f"{encoder.name}'s classifier")
    raise UsageError(
        f"{encoder.name} has no classifier: train a linear probe with `rcdm evaluate probe` and pass --probe, "
        "or attack the representation itself with --objective representation"
    )


@dataclass
class AttackOutcome:
    clean: torch.Tensor  # (B, 3, S, S) in [0, 1]
    adversarial: torch.Tensor
    clean_pred: torch.Tensor | None
    adv_pred: torch.Tensor | None
    norm: str | None
    perturbation: torch.Tensor  # per image, in ``norm`` (L-inf when None)
    params: dict[str, Any] = field(default_factory=dict)


def attack_images(
    images: torch.Tensor,
    *,
    method: str,
    objective: str,
    classifier: Classifier | None,
    represent: nn.Module,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "Linf",
    target_class: int | None = None,
    params: dict[str, str] | None = None,
    seed: int = 0,
) -> AttackOutcome:
    if objective == "representation":
        if method not in ("pgd", "pgdl2"):
            raise UsageError("--objective representation runs projected gradient ascent: use --method pgd (or pgdl2)")
        if target_class is not None:
            raise UsageError("--target-class applies to the classifier objective")
        chosen_norm = "L2" if method == "pgdl2" else norm
        adv = representation_pgd(
            represent, images, eps=eps, alpha=alpha, steps=steps, norm=chosen_norm,
            generator=torch.Generator().manual_seed(seed),
        )
        used = {"eps": eps, "alpha": alpha, "steps": steps, "norm": chosen_norm}
        clean_pred = classifier.predict(images) if classifier else None
        adv_pred = classifier.predict(adv) if classifier else None
    elif objective == "classifier":
        if classifier is None:
            raise UsageError("the classifier objective needs a classifier (an encoder with logits, or --probe)")
        attack, used = build_attack(
            method, classifier.model, eps=eps, alpha=alpha, steps=steps, n_classes=len(classifier.classes), seed=seed, params=params
        )
        clean_pred = classifier.predict(images)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if target_class is not None:
                if not 0 <= target_class < len(classifier.classes):
                    raise UsageError(f"--target-class must be in 0..{len(classifier.classes) - 1}")
                attack.set_mode_targeted_by_label(quiet=True)
                labels = torch.full_like(clean_pred, target_class)
            else:
                labels = clean_pred
            adv = attack(images, labels).detach().clamp(0, 1)
        adv_pred = classifier.predict(adv)
        chosen_norm = norm_of(method, used)
    else:
        raise UsageError(f"--objective must be classifier or representation, got {objective!r}")
    return AttackOutcome(images, adv, clean_pred, adv_pred, chosen_norm, perturbation_norm(adv - images, chosen_norm), used)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=1)
