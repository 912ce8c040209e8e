"""VICReg ResNet-50 (Bardes, Ponce and LeCun 2022), the encoder of the released
``vicreg`` RCDM model.

Only the repository's full checkpoint has the expander (projector) that the ``head``
layer needs; the backbone-only file does not, so it is not offered. ``head`` is the
expander as trained, in evaluation mode: Linear(2048, 8192) - BN - ReLU -
Linear(8192, 8192) - BN - ReLU - Linear(8192, 8192, no bias).

``--weights`` takes the full checkpoint, its ``model`` state dict alone
(``module.backbone.*``, ``module.projector.*``, with or without ``module.``), or the
encoder's own ``state_dict()`` (``trunk.*``, ``heads.head.*``), as ``.pth`` or
safetensors.
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
    RcdmError,
    WeightSource,
    find_state_dict,
    hookimpl,
    load_strict,
    load_torch_file,
)
from rcdm_plugins._training_scripts import TRAINING_SCRIPT_GLOBALS

FULLCKPT = WeightSource(
    name="fullckpt",
    url="https://dl.fbaipublicfiles.com/vicreg/resnet50_fullckpt.pth",
    license="MIT (VICReg repository)",
    description="ResNet-50 and its 8192-8192-8192 expander after 1000 ImageNet epochs, the weights RCDM used",
    notes="a full training checkpoint (with LARS optimizer state, not read); the repository's "
    "backbone-only resnet50.pth lacks the expander and so cannot give the head layer",
)

LAYERS = {
    "backbone": Layer(2048, "global-average-pooled layer4 features"),
    "layer3": Layer(1024, "global-average-pooled layer3 features"),
    "head": Layer(8192, "expander output (Linear-BN-ReLU x2, Linear), as RCDM computed it"),
}


def expander() -> nn.Sequential:
    return mlp([2048, 8192, 8192, 8192], batch_norm=True, last_bias=False)


# The checkpoint's names (with DistributedDataParallel's prefix, or without) to the
# encoder's; other keys keep the file's spelling, so that strict loading names them so.
CHECKPOINT_NAMES = [
    ("module.backbone.", "trunk."),
    ("module.projector.", "heads.head."),
    ("backbone.", "trunk."),
    ("projector.", "heads.head."),
]


def load_checkpoint_model(path: str | Path) -> dict:
    """The ``model`` state dict of the full checkpoint (DistributedDataParallel's
    ``module.`` prefix included), or the file's state dict when it holds only that."""
    checkpoint = load_torch_file(path, extra_safe_globals=TRAINING_SCRIPT_GLOBALS)
    return find_state_dict(
        checkpoint, ("model",), str(path),
        "VICReg's full checkpoint (a model state dict with module.backbone.* and module.projector.*)",
    )


def vicreg_state(path: str | Path) -> dict:
    state = rename_keys(load_checkpoint_model(path), CHECKPOINT_NAMES)
    if not any(k.startswith("heads.head.") for k in state):
        sample = ", ".join(sorted(state)[:3])
        raise RcdmError(
            f"{path} has no expander (no projector.* keys; found {sample}, ...), so the head layer cannot be "
            "built: the backbone-only resnet50.pth does not carry it; use resnet50_fullckpt.pth"
        )
    return state


def build_vicreg(request: BuildRequest) -> nn.Module:
    path = request.weights_path
    state = vicreg_state(path)
    net = ResNetWithHeads(resnet50_trunk(), heads={"head": uninitialized(expander)})
    return load_strict(net, state, str(path))


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="vicreg",
            description="VICReg ResNet-50 (variance-invariance-covariance regularisation, ImageNet)",
            build=build_vicreg,
            layers=dict(LAYERS),
            weights=(FULLCKPT,),
        )
    )
