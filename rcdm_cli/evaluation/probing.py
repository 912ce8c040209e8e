"""A linear-probe run (``rcdm evaluate probe``) in its steps: the two ImageFolder
sets, their features at every layer (one pass, cached), a probe fitted and saved per
layer, and the results record. Separate steps so that a caller can show each one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rcdm_cli.encoders import Encoder
from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.features import Features, encode_file_layers
from rcdm_cli.evaluation.probe import accuracy, fit_probe, image_folder


def check_probe_options(l2: float, batch_size: int) -> None:
    """What can be refused before any image is read."""
    if l2 < 0:
        raise UsageError("--l2 must be non-negative")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")


@dataclass
class ProbeData:
    train_paths: list[Path]
    train_labels: torch.Tensor
    val_paths: list[Path]
    val_labels: torch.Tensor
    classes: list[str]

    @classmethod
    def read(cls, train_dir: Path, val_dir: Path) -> "ProbeData":
        """Both sets, refused unless they have the same classes (a label is an index)."""
        train_paths, train_labels, classes = image_folder(train_dir)
        val_paths, val_labels, val_classes = image_folder(val_dir)
        if val_classes != classes:
            raise UsageError(f"{val_dir} has classes {val_classes}, {train_dir} has {classes}: they must match")
        return cls(train_paths, train_labels, val_paths, val_labels, classes)

    @property
    def images(self) -> int:
        return len(self.train_paths) + len(self.val_paths)


@dataclass
class ProbeFeatures:
    train: Features
    val: Features

    @property
    def cached(self) -> list[str]:
        """The layers read back from the cache for both sets."""
        return [layer for layer in self.train.layers if layer in self.train.cached and layer in self.val.cached]


def probe_features(
    encoder: Encoder,
    data: ProbeData,
    layers: list[str],
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> ProbeFeatures:
    """Every layer's features of both sets; ``progress(done, total)`` counts the
    images of both (nothing for layers that come from the cache)."""
    report = progress or (lambda done, total: None)
    offset = len(data.train_paths)
    total = data.images
    train = encode_file_layers(data.train_paths, encoder, layers, batch_size, progress=lambda d, t: report(d, total))
    val = encode_file_layers(data.val_paths, encoder, layers, batch_size, progress=lambda d, t: report(offset + d, total))
    return ProbeFeatures(train, val)


@dataclass
class LayerProbe:
    layer: str
    dim: int
    train: dict[str, float]
    val: dict[str, float]
    path: Path
    cached_features: bool

    def record(self) -> dict:
        return {"train": self.train, "val": self.val, "probe": str(self.path), "cached_features": self.cached_features}


def fit_layer(
    encoder: Encoder, data: ProbeData, features: ProbeFeatures, layer: str, l2: float, path: Path
) -> LayerProbe:
    """Fit ``layer``'s probe, save it at ``path`` with the representation it belongs
    to (so that ``rcdm attack --probe`` can refuse it for another), and score it."""
    train_feats, val_feats = features.train.layers[layer], features.val.layers[layer]
    fitted = fit_probe(train_feats, data.train_labels, data.classes, l2=l2)
    train_acc, val_acc = accuracy(fitted, train_feats, data.train_labels), accuracy(fitted, val_feats, data.val_labels)
    fitted.info.update(
        encoder=encoder.name, weights=encoder.weights_id, weights_file=encoder.weights_file, layer=layer,
        preprocessing=encoder.preprocessing.to_dict(), train_top1=train_acc["top1"], val_top1=val_acc["top1"],
    )
    fitted.save(path)
    return LayerProbe(layer, int(train_feats.shape[1]), train_acc, val_acc, path, layer in features.cached)


def probe_record(encoder: Encoder, data: ProbeData, l2: float, probes: list[LayerProbe]) -> dict:
    return {
        "metric": "probe", "encoder": encoder.name, "weights": encoder.weights_id,
        "preprocessing": encoder.preprocessing.to_dict(), "classes": data.classes, "train_images": len(data.train_paths), "val_images": len(data.val_paths), "l2": l2,
        "layers": {p.layer: p.record() for p in probes},
    }
