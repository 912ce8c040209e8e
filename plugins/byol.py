"""BYOL (Grill et al. 2020): a ResNet-50 trained to predict, from one view, a slowly
moving (target) network's projection of another view.

``head`` is the online network's projection (2048-4096-256 MLP with batch norm), the
representation BYOL's predictor works from, as computed: not normalised (BYOL
normalises only inside its loss).

Two published trainings:

- ``deepmind`` (default): the paper's own 1000-epoch model, released as a JAX/Haiku
  training checkpoint pickled with ``dill``. It is read by rcdm's restricted unpickler
  (:func:`rcdm_cli.encoders.load_numpy_pickle`), which rebuilds numpy arrays, Haiku's
  mappings (as dicts) and named tuples (as local stand-in classes) and refuses
  everything else, so nothing in the file is imported or run. The
  online network's parameters and batch-norm statistics are used; the target network,
  the optimizer state, the predictor and the online linear classifier are training
  state and are left out by name. Haiku pads every convolution and the stem's max-pool
  the TensorFlow 'SAME' way, which on strided layers puts the extra row and column at
  the bottom and right instead of both sides; the network here does the same, or its
  features would differ from the trained ones.
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

import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rcdm_cli.encoders import (
    IMAGENET,
    BuildRequest,
    EncoderSpec,
    Preprocessing,
    RcdmError,
    ResNetWithHeads,
    WeightSource,
    find_state_dict,
    hookimpl,
    is_safetensors,
    is_state_dict,
    load_numpy_pickle,
    load_strict,
    load_torch_file,
    mlp,
    resnet50_trunk,
    subtree,
)

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
    "backbone": (2048, "global-average-pooled layer4 features"),
    "layer3": (1024, "global-average-pooled layer3 features"),
    "head": (256, "projector output (2048-4096-256 MLP with batch norm), not normalised"),
}

HIDDEN, OUT = 4096, 256
# the encoder's own state_dict() keys, which --weights files may use for either source
OWN_PREFIXES = ("trunk.", "heads.")


def byol_network(same_padding: bool) -> ResNetWithHeads:
    trunk = resnet50_trunk()
    if same_padding:
        _pad_like_tensorflow(trunk)
    return ResNetWithHeads(trunk, heads={"head": mlp([2048, HIDDEN, OUT], batch_norm=True, last_bias=False)})


# --- TensorFlow 'SAME' padding ------------------------------------------------------------


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding of one spatial dimension: just enough for
    ``ceil(size / stride)`` outputs, the odd pixel going after, not before."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pads(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int, int, int]:
    top, bottom = same_pads(x.shape[-2], kernel[0], stride[0])
    left, right = same_pads(x.shape[-1], kernel[1], stride[1])
    return left, right, top, bottom


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


class SameConv2d(nn.Conv2d):
    """A convolution padded per input size, as Haiku's ``padding='SAME'`` is; same
    parameters (and state-dict keys) as the ``nn.Conv2d`` it replaces."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = _pads(x, self.kernel_size, self.stride)
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameMaxPool2d(nn.MaxPool2d):
    """Max-pooling with 'SAME' padding: padded cells never win (they are -inf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = _pair(self.kernel_size), _pair(self.stride)
        pads = _pads(x, kernel, stride)
        if any(pads):
            x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(x, kernel, stride)


def _pad_like_tensorflow(trunk: nn.Module) -> None:
    """Swap every convolution and max-pool of a torchvision-layout trunk for its 'SAME'
    counterpart, keeping parameter names and shapes."""
    for name, module in list(trunk.named_modules()):
        if isinstance(module, nn.Conv2d):
            new: nn.Module = SameConv2d(
                module.in_channels, module.out_channels, module.kernel_size, module.stride,
                padding=0, dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
            )
        elif isinstance(module, nn.MaxPool2d):
            new = SameMaxPool2d(module.kernel_size, module.stride)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(trunk.get_submodule(parent), child, new)


# --- reading DeepMind's pickle --------------------------------------------------------------

_TORCH_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]


def _is_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_MAGIC))
    return zipfile.is_zipfile(path) or head == _TORCH_LEGACY_MAGIC


def _is_tensor_file(path: Path) -> bool:
    """A PyTorch or safetensors file, as opposed to DeepMind's (dill) pickle."""
    return _is_torch_file(path) or is_safetensors(path)


def read_haiku_checkpoint(path: str | Path) -> Any:
    """DeepMind's pickle, through rcdm's restricted unpickler: numpy arrays, Haiku's
    mappings (as dicts) and dill's named tuples (as local stand-ins), nothing else."""
    return load_numpy_pickle(path)


# --- DeepMind's Haiku names -> the torchvision-layout network ---------------------------------

TreeKey = tuple[str, str, str]  # (tree, Haiku module, entry): online_params['res_net50/~/initial_conv']['w']
PARAMS, STATE = "online_params", "online_state"
TRUNK = "res_net50/~/"
# blocks, input channels, output channels of each block group
STAGES = ((3, 64, 256), (4, 256, 512), (6, 512, 1024), (3, 1024, 2048))

# Trained modules that are not part of the encoder: BYOL's predictor and the linear
# classifier trained on the side to monitor the representation.
UNUSED_MODULES = {
    PARAMS: {"predictor/linear", "predictor/batch_norm", "predictor/linear_1", "classifier"},
    STATE: {"predictor/batch_norm/~/mean_ema", "predictor/batch_norm/~/var_ema"},
}


@dataclass(frozen=True)
class Entry:
    torch_key: str
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], torch.Tensor]


def _float(a: np.ndarray) -> torch.Tensor:
    # a writable copy: arrays rebuilt from pickled bytes are read-only
    return torch.from_numpy(np.array(a, dtype=np.float32, order="C"))


def _conv_weight(a: np.ndarray) -> torch.Tensor:
    return _float(np.transpose(a, (3, 2, 0, 1)))  # HWIO -> OIHW


def _linear_weight(a: np.ndarray) -> torch.Tensor:
    return _float(a.T)  # [in, out] -> [out, in]


def _vector(a: np.ndarray) -> torch.Tensor:
    return _float(a.reshape(-1))


def _counter(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(int(a), dtype=torch.long)


def haiku_layout() -> dict[TreeKey, Entry]:
    """Every Haiku entry the encoder needs, its shape in the file and where it goes."""
    layout: dict[TreeKey, Entry] = {}

    def conv(module: str, key: str, k: int, c_in: int, c_out: int) -> None:
        layout[(PARAMS, module, "w")] = Entry(f"{key}.weight", (k, k, c_in, c_out), _conv_weight)

    def batch_norm(module: str, key: str, c: int, leading: int) -> None:
        shape = (1,) * leading + (c,)
        layout[(PARAMS, module, "scale")] = Entry(f"{key}.weight", shape, _vector)
        layout[(PARAMS, module, "offset")] = Entry(f"{key}.bias", shape, _vector)
        layout[(STATE, f"{module}/~/mean_ema", "average")] = Entry(f"{key}.running_mean", shape, _vector)
        layout[(STATE, f"{module}/~/var_ema", "average")] = Entry(f"{key}.running_var", shape, _vector)
        layout[(STATE, f"{module}/~/mean_ema", "counter")] = Entry(f"{key}.num_batches_tracked", (), _counter)

    conv(TRUNK + "initial_conv", "trunk.conv1", 7, 3, 64)
    batch_norm(TRUNK + "initial_batchnorm", "trunk.bn1", 64, 3)
    for g, (blocks, c_in, c_out) in enumerate(STAGES):
        mid = c_out // 4
        for b in range(blocks):
            hk, pt = f"{TRUNK}block_group_{g}/~/block_{b}/~/", f"trunk.layer{g + 1}.{b}."
            convs = ((1, c_in if b == 0 else c_out, mid), (3, mid, mid), (1, mid, c_out))
            for i, (k, ci, co) in enumerate(convs):
                conv(f"{hk}conv_{i}", f"{pt}conv{i + 1}", k, ci, co)
                batch_norm(f"{hk}batchnorm_{i}", f"{pt}bn{i + 1}", co, 3)
            if b == 0:
                conv(f"{hk}shortcut_conv", f"{pt}downsample.0", 1, c_in, c_out)
                batch_norm(f"{hk}shortcut_batchnorm", f"{pt}downsample.1", c_out, 3)
    layout[(PARAMS, "projector/linear", "w")] = Entry("heads.head.0.weight", (2048, HIDDEN), _linear_weight)
    layout[(PARAMS, "projector/linear", "b")] = Entry("heads.head.0.bias", (HIDDEN,), _vector)
    batch_norm("projector/batch_norm", "heads.head.1", HIDDEN, 1)
    layout[(PARAMS, "projector/linear_1", "w")] = Entry("heads.head.3.weight", (HIDDEN, OUT), _linear_weight)
    return layout


def _unused(key: TreeKey, used_modules: set[tuple[str, str]]) -> bool:
    """Entries left out on purpose: modules outside the encoder, and the moving
    averages' bookkeeping (``hidden`` is the biased sum that ``average`` corrects;
    var_ema's step counter repeats mean_ema's)."""
    tree, module, name = key
    if module in UNUSED_MODULES[tree]:
        return True
    bookkeeping = name == "hidden" or (name == "counter" and module.endswith("/~/var_ema"))
    return tree == STATE and (tree, module) in used_modules and bookkeeping


def _field(experiment: Any, name: str, path: Path) -> Any:
    """A field of the pickled ``_ByolExperimentState`` named tuple (or of a dict)."""
    if isinstance(experiment, Mapping):
        return subtree(experiment, name, source=f"{path}: experiment_state")
    fields = getattr(experiment, "_fields", None)
    if fields is None or name not in fields:
        raise RcdmError(
            f"{path} has no experiment_state.{name} (found: {', '.join(fields or ()) or type(experiment).__name__}): "
            "not the expected published layout"
        )
    return getattr(experiment, name)


def _initial_conv_alias(params: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """Accept the stem convolution under ``initial_conv_1`` (Haiku's name when
    ``initial_conv`` is taken), but not both."""
    plain, numbered = TRUNK + "initial_conv", TRUNK + "initial_conv_1"
    if numbered not in params:
        return params
    if plain in params:
        raise RcdmError(f"{path} has both {plain!r} and {numbered!r} in online_params: expected one stem convolution")
    return {(plain if k == numbered else k): v for k, v in params.items()}


def _flatten(tree: str, modules: Any, path: Path) -> dict[TreeKey, Any]:
    if not isinstance(modules, Mapping):
        kind = type(modules).__name__
        raise RcdmError(f"{path}: experiment_state.{tree} is a {kind}, not a mapping of Haiku modules")
    if tree == PARAMS:
        modules = _initial_conv_alias(modules, path)
    flat = {}
    for module, entries in modules.items():
        if not isinstance(entries, Mapping):
            raise RcdmError(f"{path}: {tree}[{module!r}] is a {type(entries).__name__}, not a mapping of arrays")
        for name, value in entries.items():
            flat[(tree, str(module), str(name))] = value
    return flat


def _name(key: TreeKey) -> str:
    tree, module, name = key
    return f"{tree}[{module!r}][{name!r}]"


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, (np.ndarray, np.generic, int, float)):
        return tuple(np.shape(value))
    return None


def _listed(label: str, items: list[str], shown: int = 3) -> str:
    more = f"; and {len(items) - shown} more" if len(items) > shown else ""
    return f"{len(items)} {label} ({'; '.join(items[:shown])}{more})"


def check_haiku_entries(found: Mapping[TreeKey, Any], layout: Mapping[TreeKey, Entry], path: Path) -> None:
    """Compare, in the file's own names, what the file holds with what the encoder needs."""
    used_modules = {(tree, module) for tree, module, _ in layout}
    missing = [_name(k) for k in layout if k not in found]
    unexpected = [_name(k) for k in found if k not in layout and not _unused(k, used_modules)]
    wrong = []
    for key, entry in layout.items():
        if key in found and _shape(found[key]) != entry.shape:
            shape = _shape(found[key])
            what = list(shape) if shape is not None else f"a {type(found[key]).__name__}"
            wrong.append(f"{_name(key)} is {what}, expected {list(entry.shape)}")
    problems = [
        _listed(label, items)
        for label, items in (("missing entries", missing), ("unexpected entries", unexpected), ("wrong shapes", wrong))
        if items
    ]
    if problems:
        raise RcdmError(f"{path} does not match the published BYOL (Haiku) layout: " + ", ".join(problems))


def _experiment(obj: Any, path: Path) -> Any:
    """The experiment state: under ``experiment_state`` in the published file, or the
    file's top level when it holds the state alone (``online_params`` beside
    ``online_state``)."""
    if isinstance(obj, Mapping) and "experiment_state" not in obj and PARAMS in obj:
        return obj
    if not isinstance(obj, Mapping) and PARAMS in (getattr(obj, "_fields", None) or ()):
        return obj
    return subtree(obj, "experiment_state", source=str(path))


def haiku_to_torch(found: Mapping[TreeKey, Any], path: Path) -> dict[str, torch.Tensor]:
    """The online network's Haiku entries, checked against the layout in the file's
    own names, converted to the network's key names and layouts."""
    layout = haiku_layout()
    check_haiku_entries(found, layout, path)
    return {entry.torch_key: entry.convert(np.asarray(found[key])) for key, entry in layout.items()}


def pickled_state(path: Path) -> dict[str, torch.Tensor]:
    """The online network of DeepMind's pickle (or of a pickle of its experiment state)."""
    experiment = _experiment(read_haiku_checkpoint(path), path)
    # target_params/target_state (the momentum network) and opt_state are training
    # state: only the online network's two trees are read, and the rest is let go
    # before converting (it is twice the size of what is kept).
    found = {}
    for tree in (PARAMS, STATE):
        found.update(_flatten(tree, _field(experiment, tree, path), path))
    del experiment
    return haiku_to_torch(found, path)


def _haiku_key(key: str) -> TreeKey | None:
    """``online_params/res_net50/~/initial_conv/w`` -> (tree, module, entry): the tree
    is the first part, the entry the last, the module (which has slashes) between."""
    tree, _, rest = key.partition("/")
    module, _, entry = rest.rpartition("/")
    return (tree, module, entry) if tree in (PARAMS, STATE) and module and entry else None


def flat_haiku_state(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The network from Haiku entries stored as tensors under flattened names."""
    trees: dict[str, dict[str, dict[str, Any]]] = {PARAMS: {}, STATE: {}}
    for key, value in state.items():
        parsed = _haiku_key(str(key))
        if parsed is None:
            raise RcdmError(
                f"{path}: {key!r} is not a flattened Haiku entry (online_params/<module>/<entry> or "
                "online_state/<module>/<entry>), and the file is not in the encoder's own layout (trunk.*, heads.head.*)"
            )
        tree, module, entry = parsed
        trees[tree].setdefault(module, {})[entry] = value.numpy()
    found: dict[TreeKey, Any] = {}
    for tree, modules in trees.items():
        found.update(_flatten(tree, modules, path))
    return haiku_to_torch(found, path)


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
