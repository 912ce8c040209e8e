"""Linear probes: how linearly decodable the class is from a frozen representation.

The recipe is the usual one for frozen features: standardise each feature with the
training set's mean and std, then fit a multinomial logistic regression with an L2
penalty by full-batch L-BFGS (deterministic, no learning rate to tune). The probe is
saved with the encoder, layer and preprocessing it belongs to, so ``rcdm attack
--probe`` can refuse a probe for another representation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from rcdm_cli.encoders import EncoderName
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.inputs import list_images
from rcdm_cli.tensorfile import save_tensors


def image_folder(root: Path) -> tuple[list[Path], torch.Tensor, list[str]]:
    """ImageFolder layout: one sub-folder per class. (paths, labels, class names)."""
    if not root.is_dir():
        raise UsageError(f"no such folder: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for c, name in enumerate(classes):
        found = list_images(root / name)
        paths += found
        labels += [c] * len(found)
    if len(classes) < 2 or not paths:
        raise UsageError(f"{root} must hold one sub-folder of images per class (at least two classes)")
    return paths, torch.tensor(labels), classes


@dataclass
class Probe:
    weight: torch.Tensor  # (classes, dim)
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    classes: list[str]
    info: dict

    def logits(self, reps: torch.Tensor) -> torch.Tensor:
        x = (reps.to(self.weight) - self.mean) / self.std
        return F.linear(x, self.weight, self.bias)

    def to(self, device) -> "Probe":
        return Probe(*(t.to(device) for t in (self.weight, self.bias, self.mean, self.std)), self.classes, self.info)

    def save(self, path: str | Path) -> None:
        meta = {"rcdm_probe": json.dumps({"classes": self.classes, **self.info})}
        save_tensors(path, {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std}, meta)

    @classmethod
    def load(cls, path: str | Path) -> "Probe":
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"no such probe file: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                header = (f.metadata() or {}).get("rcdm_probe")
                tensors = {k: f.get_tensor(k) for k in ("weight", "bias", "mean", "std")}
        except (SafetensorError, OSError) as exc:
            raise RcdmError(f"{path} is not a readable probe file: {exc}") from None
        except Exception as exc:  # a missing tensor
            raise RcdmError(f"{path} is not a probe saved by `rcdm evaluate probe` ({exc})") from None
        if header is None:
            raise UsageError(f"{path} is not a probe saved by `rcdm evaluate probe`")
        info = json.loads(header)
        classes = info.pop("classes")
        return cls(tensors["weight"], tensors["bias"], tensors["mean"], tensors["std"], classes, info)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, classes: list[str], l2: float = 1e-4, max_iter: int = 300) -> Probe:
    x = features.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0).clamp_min(1e-6)
    x = (x - mean) / std
    n_classes = len(classes)
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(F.linear(x, weight, bias), labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Probe(weight.detach().float(), bias.detach().float(), mean.float(), std.float(), list(classes), {"l2": l2})


def accuracy(probe: Probe, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        logits = probe.logits(features)
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    out = {"top1": float((top[:, 0] == labels).double().mean())}
    if logits.shape[1] >= 5:
        out["top5"] = float((top == labels[:, None]).any(dim=1).double().mean())
    return out


def probe_stem(encoder: str, weights: Path | None) -> str:
    """The file-name stem of an encoder's probes: its name, plus the weights variant
    or the local weights file's stem, so probes of different weights do not collide
    (``dino-head``, ``dino-vitb8-head``, ``timm-resnet50-head``)."""
    parsed = EncoderName.parse(encoder)
    parts = [parsed.base, parsed.argument, parsed.variant, weights.stem if weights is not None else None]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(p for p in parts if p))


def probe_files(out: Path, encoder: str, weights: Path | None, layers: list[str]) -> dict[str, Path]:
    """Where each layer's probe goes: ``OUT/STEM-LAYER.safetensors``."""
    stem = probe_stem(encoder, weights)
    return {layer: out / f"{stem}-{layer}.safetensors" for layer in layers}
