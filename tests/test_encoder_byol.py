"""The BYOL encoder: DeepMind's Haiku pickle (read without running any of it, padded
the TensorFlow way) and OpenMMLab's mmselfsup checkpoint, each loaded strictly and
checked against an independent computation from the file's own arrays."""

from __future__ import annotations

import codecs
import collections
import contextlib
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import rcdm_plugins._byol_haiku as byol_haiku
import rcdm_plugins._tf_padding as tf_padding
from helpers import rel_err, subfolder
from rcdm_cli.encoders import create_encoder, get_registry
from rcdm_cli.errors import RcdmError
from rcdm_cli.plugin import IMAGENET_MEAN, IMAGENET_STD
from synthetic import resnet50_state, state_from_shapes

DIMS = {"backbone": 2048, "layer3": 1024, "head": 256}


pytestmark = pytest.mark.usefixtures("one_thread")
HK = "res_net50/~/"
STEPS = 312800  # 1000 epochs of ImageNet at batch 4096
STAGES = ((3, 64, 256), (4, 256, 512), (6, 512, 1024), (3, 1024, 2048))

# --- DeepMind's checkpoint: names and shapes as Haiku writes them ---------------------------


def haiku_shapes() -> tuple[dict[str, dict[str, tuple[int, ...]]], dict[str, tuple[int, ...]]]:
    """online_params (module -> {name: shape}) of BYOL's ResNet-50, projector,
    predictor and online classifier, and the shape of every batch norm's statistics."""
    params: dict[str, dict[str, tuple[int, ...]]] = {}
    norms: dict[str, tuple[int, ...]] = {}

    def conv(module, k, c_in, c_out):
        params[module] = {"w": (k, k, c_in, c_out)}

    def bn(module, c, lead=3):
        shape = (1,) * lead + (c,)
        params[module] = {"scale": shape, "offset": shape}
        norms[module] = shape

    conv(HK + "initial_conv", 7, 3, 64)
    bn(HK + "initial_batchnorm", 64)
    for g, (blocks, c_in, c_out) in enumerate(STAGES):
        for b in range(blocks):
            p = f"{HK}block_group_{g}/~/block_{b}/~/"
            if b == 0:
                conv(p + "shortcut_conv", 1, c_in, c_out)
                bn(p + "shortcut_batchnorm", c_out)
            first, mid = (c_in if b == 0 else c_out), c_out // 4
            for i, (k, ci, co) in enumerate(((1, first, mid), (3, mid, mid), (1, mid, c_out))):
                conv(f"{p}conv_{i}", k, ci, co)
                bn(f"{p}batchnorm_{i}", co)
    for mlp, d_in in (("projector", 2048), ("predictor", 256)):
        params[f"{mlp}/linear"] = {"w": (d_in, 4096), "b": (4096,)}
        bn(f"{mlp}/batch_norm", 4096, lead=1)
        params[f"{mlp}/linear_1"] = {"w": (4096, 256)}
    params["classifier"] = {"w": (2048, 1000), "b": (1000,)}
    return params, norms


def haiku_trees(seed: int = 0):
    """Plausible values: weights scaled by fan-in, scales near 1, positive variances,
    integer step counters (0-d int32 arrays, as jax.device_get returns them)."""
    rng = np.random.default_rng(seed)
    shapes, norms = haiku_shapes()

    def value(name, shape):
        if name == "w":
            return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        if name == "scale":
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    params = {m: {n: value(n, s) for n, s in entries.items()} for m, entries in shapes.items()}
    state = {}
    for module, shape in norms.items():
        mean = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        var = (0.5 + rng.random(shape)).astype(np.float32)
        for ema, average in (("mean_ema", mean), ("var_ema", var)):
            state[f"{module}/~/{ema}"] = {
                "counter": np.array(STEPS, dtype=np.int32),
                "hidden": (average * 0.99).astype(np.float32),
                "average": average,
            }
    return params, state


# Stand-ins carrying the names that dill and Haiku put in the real pickle; installed
# as fake modules only while a test file is written.


def _create_namedtuple(name, fieldnames, modulename, defaults=None):
    raise AssertionError("never called: only its name is pickled")


_create_namedtuple.__module__ = "dill._dill"


def _create_array(f, args, state, npdict=None):
    raise AssertionError("never called: only its name is pickled")


_create_array.__module__ = "dill._dill"


class FlatMapping(dict):
    def __reduce__(self):
        return FlatMapping, (dict(self),)


FlatMapping.__module__ = "haiku._src.data_structures"

ExperimentState = collections.namedtuple(
    "_ByolExperimentState", ["online_params", "target_params", "online_state", "target_state", "opt_state"],
    module="byol.byol_experiment",
)
AddWeightDecayState = collections.namedtuple("AddWeightDecayState", [], module="byol.utils.optimizers")
ScaleByLarsState = collections.namedtuple("ScaleByLarsState", ["mu"], module="byol.utils.optimizers")
ScaleState = collections.namedtuple("ScaleState", [], module="optax._src.transform")


class DillLikePickler(pickle.Pickler):
    """Writes named-tuple classes as dill does (``dill._dill._create_namedtuple``);
    with ``wrap_arrays``, arrays too, as newer dill does (``_create_array``)."""

    wrap_arrays = False

    def reducer_override(self, obj):
        if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
            return _create_namedtuple, (obj.__name__, obj._fields, obj.__module__)
        if self.wrap_arrays and type(obj) is np.ndarray:
            f, args, state = obj.__reduce__()
            return _create_array, (f, args, state, None)
        return NotImplemented


@contextlib.contextmanager
def fake_modules(**members):
    """Modules named like the real ones, holding only the stand-ins."""
    with pytest.MonkeyPatch.context() as mp:
        for dotted, objects in members.items():
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    mp.setitem(sys.modules, name, types.ModuleType(name))
            for attr, obj in objects.items():
                mp.setattr(sys.modules[dotted], attr, obj, raising=False)
        yield


def dump_dill_like(obj, path, wrap_arrays=False, protocol=2):
    """As ``dill.dump(obj, f, protocol=2)`` writes it. (Protocol 4 stores bytes as they
    are rather than as UTF-8 text, which is much faster to write and read: used where
    the test is about names and shapes, not the encoding.)"""
    fakes = {
        "dill._dill": {"_create_namedtuple": _create_namedtuple, "_create_array": _create_array},
        "haiku._src.data_structures": {"FlatMapping": FlatMapping},
    }
    with fake_modules(**fakes):
        with open(path, "wb") as f:
            pickler = DillLikePickler(f, protocol=protocol)
            pickler.wrap_arrays = wrap_arrays
            pickler.dump(obj)


def deepmind_checkpoint(params, state):
    """pretrain_res50x1.pkl's layout: dict(experiment_state, step, rng), the state a
    named tuple of Haiku FlatMappings. The target network (same layout as the online
    one) shares the online arrays so the file is written and read once per array; the
    optimizer state is the LARS chain's tuple of named tuples."""
    def tree(modules):
        return FlatMapping({m: dict(v) for m, v in modules.items()})

    experiment = ExperimentState(
        online_params=tree(params),
        target_params=tree(params),
        online_state=tree(state),
        target_state=tree(state),
        opt_state=(AddWeightDecayState(), ScaleByLarsState(mu=tree(params)), ScaleState()),
    )
    return {"experiment_state": experiment, "step": STEPS, "rng": np.array([0, 1234], dtype=np.uint32)}


@pytest.fixture(scope="module")
def haiku():
    return haiku_trees()


@pytest.fixture(scope="module")
def deepmind_file(haiku, module_tmp):
    path = subfolder(module_tmp, "byol") / "pretrain_res50x1.pkl"
    dump_dill_like(deepmind_checkpoint(*haiku), path)
    return path


@pytest.fixture(scope="module")
def deepmind_encoder(deepmind_file):
    return create_encoder("byol", weights_path=deepmind_file)


# --- mmselfsup 1.x: an mmengine checkpoint -------------------------------------------------

NECK_SHAPES = {
    "fc0.weight": (4096, 2048),
    "fc0.bias": (4096,),
    "bn0.weight": (4096,),
    "bn0.bias": (4096,),
    "bn0.running_mean": (4096,),
    "bn0.running_var": (4096,),
    "bn0.num_batches_tracked": (),
    "fc1.weight": (256, 4096),
}
PREDICTOR_SHAPES = {**NECK_SHAPES, "fc0.weight": (4096, 256)}  # head.predictor: the same MLP on 256-d inputs


class HistoryBuffer:
    """Pickles under mmengine's name, with mmengine's instance state."""

    def __init__(self, values):
        self.max_length = 1000000
        self._log_history = np.asarray(values, dtype=np.float64)
        self._count_history = np.ones(len(values), dtype=np.int64)


HistoryBuffer.__module__ = "mmengine.logging.history_buffer"


def mmselfsup_state_dict(seed: int = 0) -> OrderedDict:
    """BYOL.state_dict(): backbone, neck, the predictor under head.predictor, and the
    momentum copy of backbone + neck under target_net (sharing the online tensors so
    the file stays small; the layout is what matters)."""
    backbone = resnet50_state(seed=seed)
    neck = state_from_shapes(NECK_SHAPES, seed=seed + 1)
    sd = OrderedDict()
    sd.update((f"backbone.{k}", v) for k, v in backbone.items())
    sd.update((f"neck.{k}", v) for k, v in neck.items())
    sd.update(state_from_shapes(PREDICTOR_SHAPES, prefix="head.predictor.", seed=seed + 2))
    sd["target_net.steps"] = torch.tensor(62600)
    sd.update((f"target_net.module.0.{k}", v) for k, v in backbone.items())
    sd.update((f"target_net.module.1.{k}", v) for k, v in neck.items())
    sd._metadata = OrderedDict({"": {"version": 1}, "backbone": {"version": 1}, "neck": {"version": 1}})
    return sd


def mmengine_checkpoint(state_dict) -> dict:
    """What mmengine's Runner saves, less the optimizer (removed by publish_model)."""
    return {
        "meta": {
            "epoch": 200,
            "iter": 62600,
            "cfg": "model = dict(type='BYOL', base_momentum=0.99)\n",
            "seed": 0,
            "experiment_name": "byol_resnet50_16xb256-coslr-200e_in1k_20220825_000000",
            "time": "20220825_000000",
            "mmengine_version": "0.1.0",
        },
        "state_dict": state_dict,
        "message_hub": {
            "log_scalars": OrderedDict(
                {"train/lr": HistoryBuffer([4.8, 4.7]), "train/loss": HistoryBuffer([-3.9, -3.91])}
            ),
            "runtime_info": OrderedDict({"epoch": 199, "iter": 62599, "max_epochs": 200, "max_iters": 62600}),
            "resumed_keys": OrderedDict({"train/lr": True, "train/loss": True, "epoch": True}),
        },
        "param_schedulers": [
            {"start_factor": 0.0001, "end_factor": 1.0, "begin": 0, "end": 10, "by_epoch": True, "last_step": 199},
            {"T_max": 190, "eta_min": 0.0, "begin": 10, "end": 200, "by_epoch": True, "last_step": 199},
        ],
    }


def save_mmengine(obj, path):
    """torch.save in the legacy (non-zip) format, as mmselfsup's publish_model does."""
    with fake_modules(**{"mmengine.logging.history_buffer": {"HistoryBuffer": HistoryBuffer}}):
        torch.save(obj, path, _use_new_zipfile_serialization=False)


MMSELFSUP_FILE = "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth"


@pytest.fixture(scope="module")
def mm_state():
    return mmselfsup_state_dict()


@pytest.fixture(scope="module")
def mmselfsup_file(mm_state, module_tmp):
    path = subfolder(module_tmp, "byol_mm") / MMSELFSUP_FILE
    save_mmengine(mmengine_checkpoint(mm_state), path)
    return path


@pytest.fixture(scope="module")
def mmselfsup_encoder(mmselfsup_file):
    return create_encoder("byol@mmselfsup", weights_path=mmselfsup_file)


# --- the spec -----------------------------------------------------------------------------


def test_sources_state_their_licences_digest_notes_and_preprocessing():
    """(The layers, sources, licence names and the DeepMind file's preprocessing are
    checked with every family's in test_encoder_common.)"""
    deepmind, mmselfsup = get_registry().specs["byol"].spec.weights
    # the repository's licence; its BYOL README states none for the weights
    assert deepmind.license == "Apache-2.0 (deepmind-research repository); no separate weight licence stated"
    assert mmselfsup.license == "Apache-2.0"
    assert mmselfsup.url.endswith("/" + MMSELFSUP_FILE) and mmselfsup.sha256_prefix == "de817331"
    assert "1000" in mmselfsup.notes and "200" in mmselfsup.notes and "SAME" in mmselfsup.notes
    mm = mmselfsup.preprocessing
    assert (mm.resize_to, mm.size, mm.interpolation) == (256, 224, "bilinear")
    assert (mm.mean, mm.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_same_pads_follow_tensorflow():
    assert tf_padding.same_pads(224, 7, 2) == (2, 3)
    assert tf_padding.same_pads(112, 3, 2) == (0, 1)
    assert tf_padding.same_pads(56, 3, 1) == (1, 1)
    assert tf_padding.same_pads(56, 1, 2) == (0, 0)
    assert tf_padding.same_pads(7, 3, 2) == (1, 1)


# --- DeepMind: loading, strictness ----------------------------------------------------------


def test_deepmind_layout_loads_at_every_layer(deepmind_encoder):
    x = torch.rand(2, 3, 96, 96)  # pooled features: their width does not depend on the input size
    with torch.no_grad():
        for layer, dim in DIMS.items():
            out = deepmind_encoder(x, layer)
            assert out.shape == (2, dim) and torch.isfinite(out).all()
    assert deepmind_encoder.weights_id == "deepmind"
    assert deepmind_encoder.preprocessing.interpolation == "bicubic"


def _with(params, state, *, params_edit=None, state_edit=None):
    """Copies of the trees (arrays shared) with one module edited."""
    params = {m: dict(v) for m, v in params.items()}
    state = {m: dict(v) for m, v in state.items()}
    if params_edit:
        params_edit(params)
    if state_edit:
        state_edit(state)
    return params, state


CONV = HK + "block_group_1/~/block_2/~/conv_1"
RENAMED = HK + "block_group_1/~/block_2/~/conv1"
VAR = HK + "block_group_3/~/block_2/~/batchnorm_2/~/var_ema"


def _rename_conv(p):
    p[RENAMED] = p.pop(CONV)


def _drop_var(s):
    del s[VAR]["average"]


def _reshape_projector(p):
    p["projector/linear_1"]["w"] = np.zeros((4096, 128), np.float32)


@pytest.mark.parametrize(
    "edit, named",
    [
        (dict(params_edit=_rename_conv), [f"online_params['{RENAMED}']['w']", f"online_params['{CONV}']['w']"]),
        (dict(state_edit=_drop_var), [f"online_state['{VAR}']['average']", "missing"]),
        (dict(params_edit=_reshape_projector), [f"online_params['projector/linear_1']['w'] is {[4096, 128]}"]),
    ],
    ids=["renamed", "missing", "wrong-shape"],
)
def test_deepmind_mismatches_name_the_entry(haiku, tmp_path, edit, named):
    path = tmp_path / "pretrain_res50x1.pkl"
    dump_dill_like(deepmind_checkpoint(*_with(*haiku, **edit)), path, protocol=4)
    with pytest.raises(RcdmError) as info:
        create_encoder("byol", weights_path=path)
    for text in named:
        assert text in str(info.value)


def test_deepmind_file_without_experiment_state_is_refused(tmp_path):
    path = tmp_path / "other.pkl"
    dump_dill_like({"params": FlatMapping({"a": {"w": np.zeros(2, np.float32)}})}, path)
    with pytest.raises(RcdmError, match="experiment_state"):
        create_encoder("byol", weights_path=path)


def test_stem_convolution_is_accepted_under_either_name():
    w = np.zeros((7, 7, 3, 64), np.float32)
    renamed = byol_haiku._initial_conv_alias({HK + "initial_conv_1": {"w": w}}, "x.pkl")
    assert list(renamed) == [HK + "initial_conv"]
    with pytest.raises(RcdmError, match="both"):
        byol_haiku._initial_conv_alias({HK + "initial_conv": {"w": w}, HK + "initial_conv_1": {"w": w}}, "x.pkl")


# --- DeepMind: the restricted unpickler ------------------------------------------------------


def test_unpickler_reads_protocol_2_arrays_under_numpy_1_and_2_names(tmp_path):
    arrays = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3),
        "empty": np.zeros((0, 4), np.float32),
        "step": np.array(7, np.int32),
        "scalar": np.float32(2.5),
        "od": OrderedDict(a=np.ones(2)),
        "nested": FlatMapping(w=np.full(3, 2.0)),
    }
    path = tmp_path / "a.pkl"
    dump_dill_like({"x": FlatMapping(arrays), "nt": ScaleByLarsState(mu=np.ones(3))}, path)
    raw = path.read_bytes()
    assert b"_codecs\nencode" in raw and b"__builtin__\nbytes" in raw and b"dill._dill\n_create_namedtuple" in raw
    numpy1 = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    numpy2 = numpy1.replace(b"numpy.core.multiarray", b"numpy._core.multiarray")
    for variant, module in ((numpy1, b"numpy.core.multiarray"), (numpy2, b"numpy._core.multiarray")):
        assert module + b"\n_reconstruct" in variant
        path.write_bytes(variant)
        out = byol_haiku.read_haiku_checkpoint(path)
        assert type(out["x"]) is dict
        for k, v in arrays.items():
            if isinstance(v, dict):
                assert type(out["x"][k]) is (OrderedDict if k == "od" else dict)
                assert all(np.array_equal(out["x"][k][i], v[i]) for i in v)
            else:
                assert np.array_equal(out["x"][k], v) and np.asarray(out["x"][k]).dtype == np.asarray(v).dtype
        assert out["nt"]._fields == ("mu",) and np.array_equal(out["nt"].mu, np.ones(3))


def test_unpickler_reads_arrays_wrapped_by_newer_dill(tmp_path):
    path = tmp_path / "a.pkl"
    dump_dill_like({"w": np.arange(4, dtype=np.float32)}, path, wrap_arrays=True)
    assert b"dill._dill\n_create_array" in path.read_bytes()
    assert np.array_equal(byol_haiku.read_haiku_checkpoint(path)["w"], np.arange(4, dtype=np.float32))


class _Reduces:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("kind", ["system", "eval", "codec"])
def test_unpickler_refuses_code_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "ran"
    payload = {
        "system": _Reduces(os.system, (f"touch {marker}",)),
        "eval": _Reduces(eval, (f"open({str(marker)!r}, 'w')",)),
        "codec": _Reduces(codecs.encode, ("abc", "rot13")),
    }[kind]
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"experiment_state": payload}, f, protocol=2)
    with pytest.raises(RcdmError, match="refused"):
        create_encoder("byol", weights_path=path)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_file_given_as_deepmind_weights_says_which_source(tmp_path, legacy):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {}}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(RcdmError, match="byol@mmselfsup"):
        create_encoder("byol", weights_path=path)


def test_damaged_pickle_is_reported_as_corrupt(deepmind_file, tmp_path):
    path = tmp_path / "pretrain_res50x1.pkl"
    with open(deepmind_file, "rb") as f:
        path.write_bytes(f.read(1 << 20))
    with pytest.raises(RcdmError, match="truncated or corrupt"):
        create_encoder("byol", weights_path=path)


# --- DeepMind: numbers ----------------------------------------------------------------------


def _tf_pad(x, k, s):
    def pads(n):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2

    (top, bottom), (left, right) = pads(x.shape[2]), pads(x.shape[3])
    return F.pad(x, (left, right, top, bottom))


def haiku_reference(x, params, state):
    """BYOL's forward pass written out with functional ops on the raw Haiku arrays:
    HWIO kernels, 'SAME' padding, batch norm from the moving averages."""

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32))

    def conv(h, module, stride):
        w = params[module]["w"]
        return F.conv2d(_tf_pad(h, w.shape[0], stride), t(w).permute(3, 2, 0, 1), stride=stride)

    def bn(h, module):
        shape = (1, -1, 1, 1) if h.ndim == 4 else (1, -1)
        mean = t(state[f"{module}/~/mean_ema"]["average"]).reshape(shape)
        var = t(state[f"{module}/~/var_ema"]["average"]).reshape(shape)
        scale, offset = t(params[module]["scale"]).reshape(shape), t(params[module]["offset"]).reshape(shape)
        return (h - mean) * (scale / torch.sqrt(var + 1e-5)) + offset

    h = F.relu(bn(conv(x, HK + "initial_conv", 2), HK + "initial_batchnorm"))
    h = F.max_pool2d(_tf_pad(h, 3, 2), 3, 2)  # zero padding: inputs are post-ReLU
    out = {}
    for g, (blocks, _, _) in enumerate(STAGES):
        for b in range(blocks):
            p = f"{HK}block_group_{g}/~/block_{b}/~/"
            stride = 2 if g > 0 and b == 0 else 1
            y = F.relu(bn(conv(h, p + "conv_0", 1), p + "batchnorm_0"))
            y = F.relu(bn(conv(y, p + "conv_1", stride), p + "batchnorm_1"))
            y = bn(conv(y, p + "conv_2", 1), p + "batchnorm_2")
            shortcut = bn(conv(h, p + "shortcut_conv", stride), p + "shortcut_batchnorm") if b == 0 else h
            h = F.relu(y + shortcut)
        if g == 2:
            out["layer3"] = h.mean(dim=(2, 3))
    out["backbone"] = feats = h.mean(dim=(2, 3))
    z = feats @ t(params["projector/linear"]["w"]) + t(params["projector/linear"]["b"])
    z = F.relu(bn(z, "projector/batch_norm"))
    out["head"] = z @ t(params["projector/linear_1"]["w"])
    return out


@pytest.mark.parametrize("size", [(64, 64), (33, 47)], ids=["even", "odd"])
def test_deepmind_matches_haiku_arithmetic(deepmind_encoder, haiku, size):
    """64 pads like 224 at every stage (even sizes: the extra cell after); odd sizes
    exercise the other branch of 'SAME'."""
    x = torch.rand(2, 3, *size)
    normed = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = haiku_reference(normed, *haiku)
        for layer in DIMS:
            assert rel_err(deepmind_encoder(x, layer), expected[layer]) < 1e-5, layer


def test_deepmind_gradients_reach_the_input(deepmind_encoder):
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    deepmind_encoder(x, "head").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- mmselfsup ------------------------------------------------------------------------------


def test_mmselfsup_layout_loads_at_every_layer(mmselfsup_encoder):
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        for layer, dim in DIMS.items():
            out = mmselfsup_encoder(x, layer)
            assert out.shape == (2, dim) and torch.isfinite(out).all()
    assert mmselfsup_encoder.weights_id == "mmselfsup"
    assert mmselfsup_encoder.preprocessing.interpolation == "bilinear"


def _renamed(sd):
    sd["neck.fc_0.weight"] = sd.pop("neck.fc0.weight")


def _missing(sd):
    del sd["backbone.layer2.1.bn2.running_var"]


def _reshaped(sd):
    sd["neck.fc1.weight"] = torch.zeros(128, 4096)


@pytest.mark.parametrize(
    "edit, named",
    [(_renamed, ["neck.fc_0.weight", "neck.fc0.weight"]), (_missing, ["backbone.layer2.1.bn2.running_var"]),
     (_reshaped, ["neck.fc1.weight is [128, 4096], expected [256, 4096]"])],
    ids=["renamed", "missing", "wrong-shape"],
)
def test_mmselfsup_mismatches_name_the_key(mm_state, tmp_path, edit, named):
    sd = OrderedDict(mm_state)
    edit(sd)
    path = tmp_path / MMSELFSUP_FILE
    save_mmengine(mmengine_checkpoint(sd), path)
    with pytest.raises(RcdmError) as info:
        create_encoder("byol@mmselfsup", weights_path=path)
    for text in named:
        assert text in str(info.value)


def test_backbone_only_mmselfsup_file_says_there_is_no_projector(tmp_path):
    path = tmp_path / "byol_r50_8xb32-accum16-coslr-200e_in1k_20220225-5c8b2c2e.pth"
    torch.save({"state_dict": resnet50_state(), "author": "MMSelfSup"}, path)
    with pytest.raises(RcdmError, match=r"no projector \(no neck\.\* keys"):
        create_encoder("byol@mmselfsup", weights_path=path)


def test_mmselfsup_refuses_code_outside_the_state_dict(mm_state, tmp_path):
    marker = tmp_path / "ran"
    small = OrderedDict((k, v) for k, v in mm_state.items() if k.startswith("neck."))
    checkpoint = mmengine_checkpoint(small)
    checkpoint["message_hub"]["runtime_info"]["hook"] = _Reduces(os.system, (f"touch {marker}",))
    path = tmp_path / MMSELFSUP_FILE
    save_mmengine(checkpoint, path)
    with pytest.raises(RcdmError) as info:
        create_encoder("byol@mmselfsup", weights_path=path)
    assert "refused" in str(info.value) and "outside" in str(info.value) and "state_dict" in str(info.value)
    assert not marker.exists()


def test_deepmind_pickle_given_as_mmselfsup_weights_says_which_source(tmp_path):
    path = tmp_path / "pretrain_res50x1.pkl"
    dump_dill_like({"experiment_state": {}, "step": 0}, path)
    with pytest.raises(RcdmError, match="byol@deepmind"):
        create_encoder("byol@mmselfsup", weights_path=path)


def test_mmselfsup_matches_torchvision_and_hand_written_projector(mmselfsup_encoder, mm_state):
    ref = torchvision.models.resnet50()
    ref.fc = nn.Identity()
    ref.load_state_dict({k[len("backbone."):]: v for k, v in mm_state.items() if k.startswith("backbone.")})
    ref.eval()
    x = torch.rand(2, 3, 64, 64)
    normed = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    n = {k[len("neck."):]: v for k, v in mm_state.items() if k.startswith("neck.")}
    with torch.no_grad():
        feats = ref(normed)
        h = ref.maxpool(ref.relu(ref.bn1(ref.conv1(normed))))
        layer3 = ref.layer3(ref.layer2(ref.layer1(h))).mean(dim=(2, 3))
        z = F.linear(feats, n["fc0.weight"], n["fc0.bias"])
        bn = [n[f"bn0.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
        z = F.batch_norm(z, *bn, training=False, eps=1e-5)
        head = F.linear(F.relu(z), n["fc1.weight"])
        assert rel_err(mmselfsup_encoder(x, "backbone"), feats) < 1e-5
        assert rel_err(mmselfsup_encoder(x, "layer3"), layer3) < 1e-5
        assert rel_err(mmselfsup_encoder(x, "head"), head) < 1e-5


def test_mmselfsup_gradients_reach_the_input(mmselfsup_encoder):
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    mmselfsup_encoder(x, "head").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
