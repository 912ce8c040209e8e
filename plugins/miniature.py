"""``scenes-simclr`` and ``scenes-supervised``: small CNNs trained by rcdm itself on its
procedural scenes (:mod:`rcdm_cli.scenes`).

They exist so that the paper's comparisons (what a self-supervised backbone keeps,
what its projector head throws away, how a supervised network differs) can be
reproduced offline, in minutes, on scenes whose every factor is known. Their weights
ship inside the package (``weights/``), were trained by ``scripts/train_miniature.py``
(the JSON record beside each file holds the recipe and its linear-probe table), and
are checked against the SHA-256 digests below before they are loaded, since a
damaged package file would otherwise give silently wrong representations.

Both networks share one trunk: five 3x3 convolutions, each followed by batch norm
and ReLU, with strides taking 32 px to 4 px, then global average pooling (the
128-d ``backbone``). ``scenes-simclr`` adds SimCLR's projector (Linear-BN-ReLU-Linear,
the 32-d ``head``); ``scenes-supervised`` a linear classifier of the shape
(``logits``).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from rcdm_cli.plugin import (
    BuildRequest,
    EncoderSpec,
    Layer,
    Preprocessing,
    RcdmError,
    WeightSource,
    find_state_dict,
    hookimpl,
    load_strict,
    load_torch_file,
)

# (output channels, stride) of the trunk's convolutions: 32 px -> 32, 16, 8, 4, 4.
TRUNK = ((16, 1), (32, 2), (64, 2), (128, 2), (128, 1))
BACKBONE_DIM = TRUNK[-1][0]
PROJ_HIDDEN = 128
PROJ_DIM = 32
SHAPE_CLASSES = 3

# What the networks were trained on: the scene at 32 px (guided-diffusion's centre
# crop, which halves a 64 px scene with a box filter), scaled to [-1, 1].
PREPROCESSING = Preprocessing("scenes", size=32, resize="adm", resize_to=None, mean=(0.5,) * 3, std=(0.5,) * 3)

# SHA-256 of the shipped weight files, as recorded in the JSON that
# scripts/train_miniature.py writes beside each.
SHA256 = {
    "scenes-simclr": "7cfdb4fbfeb6bba74b81d787bab51e85db7dde5033fc81bc1628280083dd4b39",
    "scenes-supervised": "01a9cc033dd68db524ef5a7e1aaefc19eaaf83fd081c950e499d25b558e53b64",
}

# How each shipped file was made. The wall time is that of a run on idle cores; the
# JSON record holds the shipped run's own (on a shared machine, 3x longer); with the
# same torch build on the same machine, both runs gave the same file, bit for bit.
TRAINING = {
    "scenes-simclr": "3000 steps of batch 256 on 8000 scenes, about 8 minutes on 2 idle CPU cores",
    "scenes-supervised": "1000 steps of batch 256 on 8000 scenes, about 1 minute on 2 idle CPU cores",
}

LICENSE = "MIT (rcdm's own, trained by scripts/train_miniature.py)"


class SceneNet(nn.Module):
    """The trunk and one head. ``head="head"``: SimCLR's projector, ``out_dim`` wide;
    ``head="logits"``: a linear classifier with ``out_dim`` classes. The head is an
    attribute named after its layer so that the state dict's keys say which network
    a file holds (``head.*`` or ``logits.*``), and loading one into the other fails."""

    def __init__(self, head: str = "head", out_dim: int = PROJ_DIM):
        super().__init__()
        if head not in ("head", "logits"):
            raise ValueError(f"unknown head {head!r}")
        self.head_name = head
        layers: list[nn.Module] = []
        channels = 3
        for width, stride in TRUNK:
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.trunk = nn.Sequential(*layers)
        if head == "head":
            module = nn.Sequential(
                nn.Linear(BACKBONE_DIM, PROJ_HIDDEN, bias=False),
                nn.BatchNorm1d(PROJ_HIDDEN),
                nn.ReLU(inplace=True),
                nn.Linear(PROJ_HIDDEN, out_dim),
            )
        else:
            module = nn.Linear(BACKBONE_DIM, out_dim)
        setattr(self, head, module)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.head_name)(features)

    def forward(self, x: torch.Tensor, layer: str = "backbone") -> torch.Tensor:
        features = self.backbone(x)
        if layer == "backbone":
            return features
        if layer == self.head_name:
            return self.project(features)
        raise ValueError(f"no layer {layer!r}: expected backbone or {self.head_name}")


def simclr_net(proj_dim: int = PROJ_DIM) -> SceneNet:
    return SceneNet("head", proj_dim)


def supervised_net() -> SceneNet:
    return SceneNet("logits", SHAPE_CLASSES)


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("rcdm_plugins") / "weights" / f"{name}.safetensors"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shipped_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The shipped file's tensors, refused unless its digest is the one it was
    released with: a truncated or altered package file would otherwise load (the
    layout still matches) and give wrong representations without a word."""
    path = shipped_path(name)
    reinstall = "reinstall rcdm (pip install --force-reinstall rcdm), or pass a weights file with --weights"
    if not path.is_file():
        raise RcdmError(f"the weights of {name!r} are missing from the package ({path}); {reinstall}")
    found = file_sha256(path)
    if found != SHA256[name]:
        raise RcdmError(
            f"{path} is damaged or altered: its SHA-256 is {found}, the released file's is {SHA256[name]}; {reinstall}"
        )
    return load_torch_file(path), str(path)


def _load(net: SceneNet, name: str, request: BuildRequest) -> SceneNet:
    if request.weights_path is None:
        state, source = _shipped_state(name)
    else:
        source = str(request.weights_path)
        state = find_state_dict(
            load_torch_file(request.weights_path), ("state_dict", "model"), source, f"the weights of {name}"
        )
    return load_strict(net, state, source).eval()


def build_simclr(request: BuildRequest) -> nn.Module:
    return _load(simclr_net(), "scenes-simclr", request)


def build_supervised(request: BuildRequest) -> nn.Module:
    return _load(supervised_net(), "scenes-supervised", request)


def _source(name: str, description: str) -> WeightSource:
    return WeightSource(
        name="shipped",
        url=None,
        license=LICENSE,
        description=f"{description}; {TRAINING[name]}",
        filename=f"{name}.safetensors",
        sha256=SHA256[name],
        checked_by=f"shipped inside the package; its SHA-256 ({SHA256[name]}) is checked before every load",
    )


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="scenes-simclr",
            description=(
                "SimCLR on rcdm's procedural scenes: a 5-layer CNN (128-d backbone) and a 2-layer projector "
                f"(32-d head); {TRAINING['scenes-simclr']}"
            ),
            build=build_simclr,
            layers={
                "backbone": Layer(BACKBONE_DIM, "global-average-pooled features of the 5-layer CNN"),
                "head": Layer(PROJ_DIM, "SimCLR projector output (Linear-BN-ReLU-Linear), what the NT-Xent loss saw"),
            },
            weights=(
                _source(
                    "scenes-simclr",
                    "SimCLR (NT-Xent on two augmented views: resized crop, flip, colour jitter, grayscale) "
                    "on procedural scenes rendered by rcdm",
                ),
            ),
            preprocessing=PREPROCESSING,
        )
    )
    register(
        EncoderSpec(
            name="scenes-supervised",
            description=(
                "supervised baseline on rcdm's procedural scenes: the same 5-layer CNN (128-d backbone) trained "
                f"to classify the shape (3 classes); {TRAINING['scenes-supervised']}"
            ),
            build=build_supervised,
            layers={
                "backbone": Layer(BACKBONE_DIM, "global-average-pooled features of the 5-layer CNN"),
                "logits": Layer(SHAPE_CLASSES, "shape classifier logits (circle, square, triangle)"),
            },
            weights=(
                _source(
                    "scenes-supervised",
                    "cross-entropy on the shape, with resized crop and flip, on procedural scenes rendered by rcdm",
                ),
            ),
            preprocessing=PREPROCESSING,
        )
    )
