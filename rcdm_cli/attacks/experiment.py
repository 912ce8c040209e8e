"""The paper's adversarial experiment: does an adversarial perturbation change what a
representation says? Attack a classifier on the representation (or the
representation itself), then let RCDM draw from the clean and from the adversarial
representation with the same noise, and classify what it draws.

One [0, 1] image tensor is perturbed; the classifier sees it with the normalisation
the classifier was trained with, the RCDM with the one its checkpoint records. Both
share the encoder's network, so the attack acts on exactly the representation that
conditions the samples.

The adversarial image is an 8-bit picture inside the budget: the attack's float
output is rounded to the 8-bit grid and projected back into the eps ball on that
grid, and every prediction and representation is computed from that tensor, which
is exactly what ``adversarial.png`` holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from rcdm_cli.attacks.methods import TWINS, AttackSpec, defaults, perturbation_norms, plan_attack
from rcdm_cli.attacks.representation import representation_pgd
from rcdm_cli.encoders import Encoder, EncoderName
from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.probe import Probe
from rcdm_cli.preprocessing import Preprocessing
from rcdm_cli.seeding import stream_seed

OBJECTIVES = ("classifier", "representation")
ATTACK_TAG = 23  # the random starts' streams: (seed, ATTACK_TAG, image or batch start)


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


def classifier_size(layers: dict[str, tuple[int, str]], probe: Probe | None) -> int | None:
    """How many classes the classifier of an encoder with these layers has (None: no
    classifier), known before any weights load."""
    if probe is not None:
        return len(probe.classes)
    return layers["logits"][0] if "logits" in layers else None


def no_classifier(name: str) -> UsageError:
    return UsageError(
        f"{name} has no classifier: train a linear probe with `rcdm evaluate probe` and pass --probe, "
        "or attack the representation itself with --objective representation"
    )


def check_probe(encoder: Encoder, probe: Probe) -> None:
    """A probe reads one encoder's representation, with one set of weights, at one
    layer: refuse it for any other (a probe on other weights gives arbitrary labels)."""
    recorded = probe.info.get("encoder")
    if recorded:
        parsed = EncoderName.parse(recorded)
        recorded_name = str(EncoderName(parsed.base, None, parsed.argument))
        if recorded_name != encoder.name:
            raise UsageError(f"the probe was trained on {recorded} representations, not {encoder.name}")
        recorded_weights = probe.info.get("weights", parsed.variant)
        if ("weights" in probe.info or parsed.variant) and recorded_weights != encoder.weights_id:
            theirs = f"weights {recorded_weights!r}" if recorded_weights else "local weights"
            ours = f"weights {encoder.weights_id!r}" if encoder.weights_id else "local weights (--weights)"
            raise UsageError(f"the probe was trained on {recorded_name} with {theirs}; this run uses {ours}")
    layer = probe.info.get("layer")
    if layer not in encoder.layers:
        raise UsageError(f"the probe is for layer {layer!r}, which {encoder.name} does not have")
    if encoder.layers[layer][0] != probe.weight.shape[1]:
        raise UsageError(f"the probe expects {probe.weight.shape[1]}-d features, {encoder.name}/{layer} gives {encoder.layers[layer][0]}")


def build_classifier(encoder: Encoder, probe: Probe | None) -> Classifier:
    """The encoder's own classifier (a ``logits`` layer, e.g. ``supervised``) or a
    linear probe trained on one of its layers."""
    if probe is not None:
        check_probe(encoder, probe)
        layer = probe.info["layer"]
        pre = Preprocessing.from_dict(probe.info["preprocessing"]) if "preprocessing" in probe.info else encoder.native_preprocessing
        head = probe.to(encoder.mean.device).logits
        return Classifier(Normalized(encoder, pre, layer, head), probe.classes, f"linear probe on {encoder.name}/{layer}")
    if "logits" in encoder.layers:
        n = encoder.layers["logits"][0]
        classes = _imagenet_names() if n == 1000 else [str(i) for i in range(n)]
        return Classifier(Normalized(encoder, encoder.native_preprocessing, "logits"), classes, f"{encoder.name}'s classifier")
    raise no_classifier(encoder.name)


@dataclass
class AttackPlan:
    """A checked request: the attack, its parameters and its budget, decided before
    any weights load."""

    objective: str
    method: str
    params: dict[str, Any]
    budget: dict[str, Any] | None
    target_class: int | None = None
    spec: AttackSpec | None = None  # the torchattacks attack, for the classifier objective


def plan(
    *,
    objective: str,
    method: str,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    norm: str | None = None,
    target_class: int | None = None,
    params: dict[str, str] | None = None,
    n_classes: int | None = None,
    seed: int = 0,
) -> AttackPlan:
    if objective not in OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if objective == "representation":
        return _plan_representation(method, eps, alpha, steps, norm, target_class, params)
    if target_class is not None and n_classes is not None and not 0 <= target_class < n_classes:
        raise UsageError(f"--target-class must be in 0..{n_classes - 1}, got {target_class}")
    spec = plan_attack(
        method, eps=eps, alpha=alpha, steps=steps, norm=norm, params=params, n_classes=n_classes, seed=seed,
        targeted=target_class is not None,
    )
    return AttackPlan("classifier", spec.method, spec.used, spec.budget, target_class, spec)


def _plan_representation(method, eps, alpha, steps, norm, target_class, params) -> AttackPlan:
    """Projected gradient ascent on the representation, with the budget and step
    defaults of the torchattacks method of the same name (pgd: 8/255, 2/255, 10
    steps; pgdl2: 1.0, 0.2, 10 steps)."""
    method = method.lower()
    if method not in ("pgd", "pgdl2"):
        raise UsageError("--objective representation runs projected gradient ascent: use --method pgd (or pgdl2)")
    if target_class is not None:
        raise UsageError("--target-class applies to the classifier objective")
    if params:
        raise UsageError(
            "--param passes parameters to torchattacks, which the representation objective does not use; "
            "it takes --eps, --alpha, --attack-steps and --norm"
        )
    if norm is not None:
        if norm not in ("Linf", "L2"):
            raise UsageError(f"--norm must be Linf or L2, got {norm!r}")
        method = TWINS.get((method, norm), method)
    base = defaults(method)
    chosen = {
        "eps": base["eps"] if eps is None else eps,
        "alpha": base["alpha"] if alpha is None else alpha,
        "steps": base["steps"] if steps is None else steps,
    }
    for key, option in (("eps", "--eps"), ("alpha", "--alpha"), ("steps", "--attack-steps")):
        if chosen[key] <= 0:
            raise UsageError(f"{option} must be positive, got {chosen[key]}")
    ball = "L2" if method == "pgdl2" else "Linf"
    return AttackPlan("representation", method, {**chosen, "norm": ball}, {"norm": ball, "eps": float(chosen["eps"])})


@dataclass
class AttackOutcome:
    clean: torch.Tensor  # (B, 3, S, S) in [0, 1], on the 8-bit grid
    adversarial: torch.Tensor  # the same, inside the budget: what adversarial.png holds
    raw: torch.Tensor  # the attack's own float output, before quantisation
    clean_pred: torch.Tensor | None
    adv_pred: torch.Tensor | None
    raw_pred: torch.Tensor | None  # the classifier on ``raw``: rounding can undo a minimum-norm attack
    norms: dict[str, torch.Tensor] = field(default_factory=dict)  # per image: "linf" and "l2" of adversarial - clean


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] values as the integers 0..255 an 8-bit image file holds."""
    return (x.double() * 255).round().clamp(0, 255)


def quantize(clean: torch.Tensor, adversarial: torch.Tensor, budget: dict[str, Any] | None) -> torch.Tensor:
    """The adversarial image on the 8-bit grid, inside the budget.

    Rounding alone can step out of the ball (8/255 becomes 9/255 on some pixels).
    L-inf: each pixel's change is limited to the whole steps the budget allows. L2:
    the perturbation is scaled by the largest factor whose rounding stays in the ball
    (found by bisection), which keeps its direction; truncating instead would zero
    most of a small L2 perturbation spread over many pixels. ``clean`` must lie on the
    grid (it comes from an 8-bit image)."""
    base = to_8bit(clean)
    delta = (adversarial.double() * 255).clamp(0, 255) - base
    if budget is not None and budget["norm"] == "Linf":
        limit = math.floor(budget["eps"] * 255 + 1e-6)
        rounded = delta.round().clamp(-limit, limit)
    elif budget is not None and budget["norm"] == "L2":
        rounded = _round_into_l2_ball(delta, budget["eps"] * 255)
    else:
        rounded = delta.round()
    return ((base + rounded).clamp(0, 255) / 255).to(clean.dtype)


def _round_into_l2_ball(delta: torch.Tensor, radius: float, iterations: int = 40) -> torch.Tensor:
    """round(s * delta) per image with the largest s in [0, 1] whose L2 norm is at most
    ``radius``; every |round(s * d)| grows with s, so the norm does too."""

    def norms(scale: torch.Tensor) -> torch.Tensor:
        return (delta * scale).round().flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    lo = torch.zeros(len(delta), 1, 1, 1, dtype=delta.dtype, device=delta.device)
    hi = torch.ones_like(lo)
    fits = norms(hi) <= radius
    lo = torch.where(fits, hi, lo)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        ok = norms(mid) <= radius
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return (delta * lo).round()


def attack_images(
    images: torch.Tensor,
    attack: AttackPlan,
    *,
    classifier: Classifier | None,
    represent: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 16,
    seed: int = 0,
) -> AttackOutcome:
    """Attack ``images`` ([0, 1]) in batches of ``batch_size``; predictions come from
    the quantised adversarial images."""
    if attack.objective == "classifier" and classifier is None:
        raise UsageError("the classifier objective needs a classifier (an encoder with logits, or --probe)")
    clean = to_8bit(images).div(255).to(images.dtype)
    clean_pred = classifier.predict(clean, batch_size) if classifier is not None else None
    built = attack.spec.build(classifier.model) if attack.spec is not None else None
    raw = []
    for start in range(0, len(clean), batch_size):
        chunk = clean[start : start + batch_size]
        if built is None:
            raw.append(_representation_batch(chunk, attack, represent, seed, start))
        else:
            labels = clean_pred[start : start + batch_size]
            if attack.target_class is not None:
                labels = torch.full_like(labels, attack.target_class)
            raw.append(_torchattacks_batch(chunk, labels, attack.spec, built, stream_seed(seed, ATTACK_TAG, start)))
    raw_t = torch.cat(raw).clamp(0, 1)
    adversarial = quantize(clean, raw_t, attack.budget)
    adv_pred = classifier.predict(adversarial, batch_size) if classifier is not None else None
    raw_pred = classifier.predict(raw_t, batch_size) if classifier is not None else None
    return AttackOutcome(clean, adversarial, raw_t, clean_pred, adv_pred, raw_pred, perturbation_norms(adversarial - clean))


def representations(
    outcome: AttackOutcome, represent: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean and the adversarial representations, of exactly the saved images."""
    with torch.no_grad():
        clean = torch.cat([represent(b).cpu() for b in outcome.clean.split(batch_size)])
        adversarial = torch.cat([represent(b).cpu() for b in outcome.adversarial.split(batch_size)])
    return clean, adversarial


def _torchattacks_batch(images, labels, spec: AttackSpec, built, batch_seed: int) -> torch.Tensor:
    """torchattacks draws its random starts from the global generator: seed it for
    this batch only, so the run is reproducible and the caller's state untouched."""
    devices = [images.device.index or 0] if images.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(batch_seed)
        return spec.run(built, images, labels)


def _representation_batch(images, attack: AttackPlan, represent, seed: int, start: int) -> torch.Tensor:
    """Each image's random start is keyed by its position in the run, so it does not
    depend on the batch size."""
    noise = torch.cat([
        torch.rand((1, *images.shape[1:]), generator=torch.Generator().manual_seed(stream_seed(seed, ATTACK_TAG, start + i))) * 2 - 1
        for i in range(len(images))
    ])
    p = attack.params
    return representation_pgd(represent, images, eps=p["eps"], alpha=p["alpha"], steps=p["steps"], norm=p["norm"], noise=noise)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=1)


def summarize(
    entries: list[dict[str, Any]], similarity: torch.Tensor, norms: dict[str, torch.Tensor], n: int, classified: bool
) -> dict[str, Any]:
    """The experiment in numbers, from the per-image records: how often the attack
    changed the label, and whether RCDM's samples from the adversarial representation
    follow the clean label or the adversarial one. A sample counts as taking the
    adversarial label only where the attack changed the label."""
    count = len(entries)
    out: dict[str, Any] = {
        "images": count,
        "samples_per_image": n,
        "mean_cosine_similarity": float(similarity.mean()),
        "mean_perturbation_linf": float(norms["linf"].mean()),
        "mean_perturbation_l2": float(norms["l2"].mean()),
    }
    if not classified:
        return out
    keep = sum(sum(p == e["clean_label"] for p in e["adversarial_sample_labels"]) for e in entries)
    take = sum(
        sum(p == e["adversarial_label"] for p in e["adversarial_sample_labels"])
        for e in entries
        if e["adversarial_label"] != e["clean_label"]
    )
    clean_ok = sum(sum(p == e["clean_label"] for p in e["clean_sample_labels"]) for e in entries)
    total = count * n
    out.update(
        images_where_rounding_undid_the_attack=sum(
            e["unquantized_adversarial_label"] != e["clean_label"] and e["adversarial_label"] == e["clean_label"] for e in entries
        ),
        attack_success_rate=sum(e["success"] for e in entries) / count,
        adversarial_samples_keeping_clean_label=keep / total,
        adversarial_samples_taking_adversarial_label=take / total,
        clean_samples_with_clean_label=clean_ok / total,
    )
    return out
