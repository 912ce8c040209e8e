"""DeepMind's BYOL release, a JAX/Haiku training checkpoint, as a PyTorch state dict.

The file is a ``dill`` pickle of the experiment state; it is read by rcdm's restricted
unpickler (:func:`rcdm_cli.plugin.load_numpy_pickle`), which rebuilds numpy arrays,
Haiku's mappings (as dicts) and named tuples (as local stand-in classes) and refuses
everything else, so nothing in the file is imported or run. Only the online network's
two trees (``online_params``, ``online_state``) are kept; their entries are checked
against the layout of the published ResNet-50 and projector in the file's own names
(so a wrong file is reported in terms its author knows) and converted to the
torchvision-layout network's keys and tensor layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from rcdm_cli.encoders.weights import subtree
from rcdm_cli.plugin import RcdmError, load_numpy_pickle

# the projector's widths: 2048 -> HIDDEN -> OUT
HIDDEN, OUT = 4096, 256


def read_haiku_checkpoint(path: str | Path) -> Any:
    """DeepMind's pickle, through rcdm's restricted unpickler: numpy arrays, Haiku's
    mappings (as dicts) and dill's named tuples (as local stand-ins), nothing else."""
    return load_numpy_pickle(path)


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
