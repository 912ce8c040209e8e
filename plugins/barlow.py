"""Barlow Twins ResNet-50 (Zbontar et al. 2021), the encoder of the released
``barlow`` RCDM model.

RCDM used VISSL's model-zoo checkpoint (the default, ``vissl``); the Barlow Twins
repository's own full checkpoint (``repo``) is a separate training run of the same
architecture. ``head`` is the projector as trained, in evaluation mode:
(Linear(no bias) - BN - ReLU) x2 - Linear(8192, 8192, no bias).

``--weights`` takes each source's published file, or its network without the
wrapping: for ``vissl`` see :mod:`rcdm_plugins._vissl`; for ``repo`` the ``model``
state dict alone (``module.backbone.*``, ``module.projector.*``, with or without
``module.``). Either source also takes the encoder's own ``state_dict()``
(``trunk.*``, ``heads.head.*``), as ``.pth`` or safetensors.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rcdm_cli.encoders.nets import ResNetWithHeads, mlp, resnet50_trunk, uninitialized
from rcdm_cli.encoders.weights import rename_keys
from rcdm_cli.plugin import (
    BuildRequest,
    EncoderSpec,
    Layer,
    WeightSource,
    find_state_dict,
    hookimpl,
    load_strict,
    load_torch_file,
)
from rcdm_plugins._vissl import LARS_SAFE_GLOBALS, MODEL_ZOO, VISSL_LICENSE, vissl_state as _vissl_state
from rcdm_plugins._training_scripts import TRAINING_SCRIPT_GLOBALS

VISSL = WeightSource(
    name="vissl",
    url=f"{MODEL_ZOO}/barlow_twins/barlow_twins_32gpus_4node_imagenet1k_1000ep_resnet50.torch",
    license=VISSL_LICENSE,
    description="VISSL model zoo, 1000 ImageNet epochs on 32 GPUs, the weights RCDM used",
    notes="a different training run from `repo`: representations (and linear-probe numbers) differ",
)
REPO = WeightSource(
    name="repo",
    url="https://dl.fbaipublicfiles.com/barlowtwins/ljng/checkpoint.pth",
    filename="barlowtwins_ljng_checkpoint.pth",  # the cache is keyed by file name
    license="MIT (Barlow Twins repository)",
    description="the Barlow Twins repository's full checkpoint (backbone, projector, optimizer), 1000 ImageNet epochs",
    notes="a different training run from `vissl` (the one RCDM used)",
)

LAYERS = {
    "backbone": Layer(2048, "global-average-pooled layer4 features"),
    "layer3": Layer(1024, "global-average-pooled layer3 features"),
    "head": Layer(8192, "projector output ((Linear-BN-ReLU) x2, Linear), as RCDM computed it"),
}

# VISSL names its projector "<block>.clf.<layer>"; the head's nn.Sequential numbers
# the same layers 0 (Linear), 1 (BN), 3 (Linear), 4 (BN), 6 (Linear).
VISSL_HEAD_LAYERS = {"0.clf.0": 0, "0.clf.1": 1, "1.clf.0": 3, "1.clf.1": 4, "2.clf.0": 6}

# The batch norm the Barlow Twins loss applies to the embeddings: no part of the
# encoder.
REPO_LOSS_NORM = ("module.bn.", "bn.")
# The repository's names (with DistributedDataParallel's prefix, or without) to the
# encoder's; other keys keep the file's spelling, so that strict loading names them so.
REPO_NAMES = [
    ("module.backbone.", "trunk."),
    ("module.projector.", "heads.head."),
    ("backbone.", "trunk."),
    ("projector.", "heads.head."),
]


# Older repository checkpoints pickle the training script's filter (the stand-in is
# VICReg's: its training code descends from this one). Both sources' stand-ins are
# admitted for either file, so that a file given for the wrong source is reported by
# its layout, not as unloadable.
SAFE_GLOBALS = (*TRAINING_SCRIPT_GLOBALS, *LARS_SAFE_GLOBALS)


def projector() -> nn.Sequential:
    return mlp([2048, 8192, 8192, 8192], bias=False, batch_norm=True)


def vissl_state(path: Path) -> dict:
    return _vissl_state(path, VISSL_HEAD_LAYERS, extra_safe_globals=SAFE_GLOBALS)


def repo_state(path: Path) -> dict:
    """The repository checkpoint's ``model`` (or that state dict alone) under the
    encoder's names, without the loss's batch norm."""
    model = find_state_dict(
        load_torch_file(path, extra_safe_globals=SAFE_GLOBALS), ("model",), str(path),
        "the Barlow Twins repository's checkpoint (a model state dict with module.backbone.* and module.projector.*)",
    )
    encoder_part = {k: v for k, v in model.items() if not k.startswith(REPO_LOSS_NORM)}
    return rename_keys(encoder_part, REPO_NAMES)


def build_barlow(request: BuildRequest) -> nn.Module:
    path = request.weights_path
    source = request.source or VISSL
    state = repo_state(path) if source.name == REPO.name else vissl_state(path)
    net = ResNetWithHeads(resnet50_trunk(), heads={"head": uninitialized(projector)})
    return load_strict(net, state, str(path))


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="barlow",
            description="Barlow Twins ResNet-50 (redundancy reduction, ImageNet)",
            build=build_barlow,
            layers=dict(LAYERS),
            weights=(VISSL, REPO),
        )
    )
