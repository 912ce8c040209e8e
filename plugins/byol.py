"""BYOL (Grill et al. 2020): a ResNet-50 trained to predict, from one view, a slowly
moving (target) network's projection of another view.

``head`` is the online network's projection (2048-4096-256 MLP with batch norm), the
representation BYOL's predictor works from, as computed: not normalised (BYOL
normalises only inside its loss).

Two published trainings:

- ``deepmind`` (default): the paper's own 1000-epoch model, released as a JAX/Haiku
  training checkpoint pickled with ``dill``, read without running any of it
  (:mod:`rcdm_plugins._byol_haiku`). The online network's parameters and batch-norm
  statistics are used; the target network, the optimizer state, the predictor and the
  online linear classifier are training state and are left out by name. Haiku pads
  every convolution and the stem's max-pool the TensorFlow 'SAME' way
  (:mod:`rcdm_plugins._tf_padding`); the network here does the same, or its features
  would differ from the trained ones.
- ``mmselfsup``: OpenMMLab's PyTorch re-implementation (200 epochs), an mmengine
  checkpoint whose ``state_dict`` holds ``backbone.*`` (torchvision layout),
  ``neck.*`` (the projector), ``head.*`` (the predictor) and ``target_net.*`` (the
  momentum network); only the first two are used.

``--weights`` also takes each source's network without the wrapping. For ``deepmind``:
a pickle of the experiment state alone (or of a dict with ``online_params`` and
``online_state``), or a tensors file (``.pth`` or safetensors) whose keys are the Haiku
entries flattened as ``online_params/<module>/<entry>`` and
``online_state/<module>/<entry>`` (arrays as Haiku stores them, HWIO). For
``mmselfsup``: the ``state_dict`` alone. Either source takes the encoder's own
``state_dict()`` (``trunk.*``, ``heads.head.*``); which padding the network uses
follows the source named (``byol`` or ``byol@mmselfsup``), not the file.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from rcdm_cli.encoders.nets import ResNetWithHeads, mlp, resnet50_trunk
from rcdm_cli.encoders.weights import is_safetensors, is_state_dict
from rcdm_cli.plugin import (
    IMAGENET,
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
from rcdm_plugins._byol_haiku import HIDDEN, OUT, flat_haiku_state, pickled_state
from rcdm_plugins._tf_padding import pad_like_tensorflow

# BYOL's evaluation takes the central 224/256 of the short side and resizes it to 224
# with bicubic interpolation (TensorFlow's, without antialiasing): close to, not
# exactly, a bicubic resize to 256 followed by a 224 centre crop.
DEEPMIND_PREPROCESSING = Preprocessing("byol", resize_to=256, interpolation="bicubic")

DEEPMIND = WeightSource(
    name="deepmind",
    url="https://storage.googleapis.com/deepmind-byol/checkpoints/pretrain_res50x1.pkl",
    license="Apache-2.0 (deepmind-research repository); no separate weight licence stated",
    description="DeepMind's BYOL ResNet-50: the paper's model, 1000 epochs, batch 4096 (74.3% linear top-1)",
    notes=(
        "a JAX/Haiku training checkpoint (570 MB, dill pickle of numpy arrays); the online network is used. "
        "TensorFlow 'SAME' padding is reproduced exactly. Native preprocessing approximates BYOL's evaluation "
        "crop (central 224/256 of the short side, bicubic resize to 224) as a bicubic resize to 256 and a 224 "
        "centre crop"
    ),
)
MMSELFSUP = WeightSource(
    name="mmselfsup",
    url=(
        "https://download.openmmlab.com/mmselfsup/1.x/byol/byol_resnet50_16xb256-coslr-200e_in1k/"
        "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth"
    ),
    license="Apache-2.0",
    description="OpenMMLab mmselfsup 1.x BYOL ResNet-50, 200 epochs, batch 4096 (71.8% ImageNet linear top-1)",
    sha256_prefix="de817331",
    notes=(
        "not the paper's model: a PyTorch re-implementation with its own recipe, 200 epochs at batch 4096 "
        "(DeepMind's release is the paper's 1000-epoch model) and PyTorch's symmetric padding instead of "
        "TensorFlow 'SAME'; 71.8% ImageNet linear top-1 against 74.3%. Its representations differ from "
        "byol@deepmind's and are not interchangeable. Evaluated with a bilinear resize to 256 and a 224 "
        "centre crop"
    ),
    preprocessing=IMAGENET,
)

LAYERS = {
    "backbone": Layer(2048, "global-average-pooled layer4 features"),
    "layer3": Layer(1024, "global-average-pooled layer3 features"),
    "head": Layer(256, "projector output (2048-4096-256 MLP with batch norm), not normalised"),
}

# the encoder's own state_dict() keys, which --weights files may use for either source
OWN_PREFIXES = ("trunk.", "heads.")


def byol_network(same_padding: bool) -> ResNetWithHeads:
    trunk = resnet50_trunk()
    if same_padding:
        pad_like_tensorflow(trunk)
    return ResNetWithHeads(trunk, heads={"head": mlp([2048, HIDDEN, OUT], batch_norm=True, last_bias=False)})


# --- DeepMind's weights --------------------------------------------------------------

_TORCH_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


def _is_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_MAGIC))
    return zipfile.is_zipfile(path) or head == _TORCH_LEGACY_MAGIC


def _is_tensor_file(path: Path) -> bool:
    """A PyTorch or safetensors file, as opposed to DeepMind's (dill) pickle."""
    return _is_torch_file(path) or is_safetensors(path)


def _looks_like_mmselfsup(obj: Any) -> bool:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return True
    return is_state_dict(obj) and any(str(k).startswith(("backbone.", "neck.")) for k in obj)


def tensor_file_state(path: Path) -> dict[str, torch.Tensor]:
    """A tensors file given for DeepMind's weights: flattened Haiku entries, or the
    encoder's own keys."""
    obj = load_torch_file(path, extra_safe_globals=MMENGINE_GLOBALS)
    if _looks_like_mmselfsup(obj):
        raise RcdmError(f"{path} is an mmselfsup (PyTorch) checkpoint, not DeepMind's BYOL weights: use byol@mmselfsup for it")
    state = find_state_dict(
        obj, (), str(path),
        "DeepMind's BYOL weights as tensors (online_params/<module>/<entry>, or the encoder's trunk.*, heads.head.*)",
    )
    if any(str(k).startswith(OWN_PREFIXES) for k in state):
        return state
    return flat_haiku_state(state, path)


def deepmind_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The online network of DeepMind's weights, under the network's key names."""
    path = Path(path)
    if path.is_file() and _is_tensor_file(path):
        return tensor_file_state(path)
    return pickled_state(path)


# --- mmselfsup ---------------------------------------------------------------------------------


class HistoryBufferRecord:
    """Stands in for mmengine's ``HistoryBuffer`` (the loss history an mmengine
    checkpoint keeps in ``message_hub``): its state kept as data, no behaviour."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


MMENGINE_GLOBALS = [(HistoryBufferRecord, "mmengine.logging.history_buffer.HistoryBuffer")]
# state_dict prefixes of the training-only parts: the predictor and the momentum network
MMSELFSUP_UNUSED = ("head.", "target_net.")


def mmselfsup_view(net: ResNetWithHeads) -> nn.Module:
    """The network's own modules under the checkpoint's names (``backbone.*``,
    ``neck.fc0/bn0/fc1``), so that loading reports any difference in the file's terms."""
    head = net.heads["head"]
    neck = nn.Module()
    neck.fc0, neck.bn0, neck.fc1 = head[0], head[1], head[3]
    view = nn.Module()
    view.backbone, view.neck = net.trunk, neck
    return view


def read_mmengine_checkpoint(path: Path) -> Any:
    if path.is_file() and not _is_tensor_file(path):
        raise RcdmError(
            f"{path} is neither a PyTorch checkpoint nor safetensors (DeepMind's pickle is loaded by byol@deepmind)"
        )
    try:
        return load_torch_file(path, extra_safe_globals=MMENGINE_GLOBALS)
    except RcdmError as exc:
        if "refused to load" not in str(exc):
            raise
        raise RcdmError(
            f"{exc}. The weights are the state_dict, plain tensors; an mmengine checkpoint also keeps training "
            "records beside it (meta, message_hub, param_schedulers), and objects like this one come from those "
            "records, outside the state_dict, which is all the encoder needs. If you trust the file, save its "
            "state_dict alone (torch.save({'state_dict': checkpoint['state_dict']}, 'byol.pth')) and load that"
        ) from None


def mmselfsup_state(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The backbone and neck of an mmselfsup checkpoint (or of its state_dict alone)
    under the checkpoint's names, or the encoder's own keys (then ``True``)."""
    path = Path(path)
    state = find_state_dict(
        read_mmengine_checkpoint(path), ("state_dict",), str(path),
        "an mmselfsup BYOL checkpoint (a state_dict with backbone.* and neck.*)",
    )
    if any(str(k).startswith(OWN_PREFIXES) for k in state):
        return state, True
    if not any(str(k).startswith("neck.") for k in state):
        sample = ", ".join(sorted(map(str, state))[:3])
        raise RcdmError(
            f"{path} has no projector (no neck.* keys; found {sample}, ...), so the BYOL head cannot be built: "
            "backbone-only releases (such as mmselfsup 0.x's) do not carry it; use the mmselfsup 1.x checkpoint"
        )
    return {k: v for k, v in state.items() if not str(k).startswith(MMSELFSUP_UNUSED)}, False


def build(request: BuildRequest) -> nn.Module:
    deepmind = request.source is None or request.source.name == DEEPMIND.name
    path = request.weights_path
    net = byol_network(same_padding=deepmind)
    if path is None:
        return net
    if deepmind:
        state, own = deepmind_state(path), True
    else:
        state, own = mmselfsup_state(path)
    load_strict(net if own else mmselfsup_view(net), state, str(path))
    return net


@hookimpl
def register_encoders(register):
    register(
        EncoderSpec(
            name="byol",
            description="BYOL ResNet-50 with its projector (DeepMind's release; OpenMMLab's as byol@mmselfsup)",
            build=build,
            layers=dict(LAYERS),
            weights=(DEEPMIND, MMSELFSUP),
            preprocessing=DEEPMIND_PREPROCESSING,
        )
    )
