"""The Barlow Twins encoder: VISSL's model-zoo file (whose LARS param groups pickle
``_LARS._exclude_bias_and_norm`` through ``getattr``) and the repository's full
checkpoint, strict loading, and the numbers checked against torchvision and
hand-written projector arithmetic on the file's own tensors."""

from __future__ import annotations

import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import rel_err, subfolder
from rcdm_cli.encoders import create_encoder, get_registry
from rcdm_cli.errors import RcdmError
from rcdm_cli.plugin import IMAGENET_MEAN, IMAGENET_STD
from rcdm_plugins import barlow
from synthetic import missing as _missing
from synthetic import renamed as _renamed
from synthetic import reshaped as _reshaped
from synthetic import BUFFERS, barlow_vissl_checkpoint, bn_shapes, resnet50_state, square_weight, state_from_shapes, vissl_lars_importable

DIMS = {"backbone": 2048, "layer3": 1024, "head": 8192}
VISSL_URL = (
    "https://dl.fbaipublicfiles.com/vissl/model_zoo/barlow_twins/"
    "barlow_twins_32gpus_4node_imagenet1k_1000ep_resnet50.torch"
)


# The projector in nn.Sequential numbering (as the repository saves it); VISSL's
# names for the same tensors follow.
PROJECTOR_SHAPES = {"0.weight": (8192, 2048), **bn_shapes("1", 8192), "3.weight": (8192, 8192), **bn_shapes("4", 8192), "6.weight": (8192, 8192)}
SQUARE = ("3.weight", "6.weight")
VISSL_NAMES = {"0.": "0.clf.0.", "1.": "0.clf.1.", "3.": "1.clf.0.", "4.": "1.clf.1.", "6.": "2.clf.0."}


def make_projector(seed: int = 1) -> OrderedDict:
    small = state_from_shapes({k: s for k, s in PROJECTOR_SHAPES.items() if k not in SQUARE}, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    small.update({k: square_weight(gen) for k in SQUARE})
    return OrderedDict((k, small[k]) for k in PROJECTOR_SHAPES)


def vissl_head_name(key: str) -> str:
    layer, _, param = key.partition(".")
    return VISSL_NAMES[layer + "."] + param


# --- VISSL's model-zoo file ----------------------------------------------------------


def save_vissl(trunk, heads, path):
    with vissl_lars_importable() as lars:
        torch.save(barlow_vissl_checkpoint(trunk, heads, lars._exclude_bias_and_norm), path)
    return path


# --- the repository's full checkpoint -----------------------------------------------


def repo_checkpoint(model) -> dict:
    """ljng/checkpoint.pth: epoch, the DDP model's state dict and the LARS state with
    two param groups (weights, then biases and norms) whose filters are booleans."""
    weights = [v for k, v in model.items() if not k.endswith(BUFFERS) and v.ndim > 1]
    others = [v for k, v in model.items() if not k.endswith(BUFFERS) and v.ndim == 1]
    group = {"lr": 0.0, "weight_decay": 1.5e-6, "momentum": 0.9, "eta": 0.001, "weight_decay_filter": True, "lars_adaptation_filter": True}
    params = [*weights, *others]
    return {
        "epoch": 1000,
        "model": model,
        "optimizer": {
            "state": {i: {"mu": p} for i, p in enumerate(params)},
            "param_groups": [
                {**group, "params": list(range(len(weights)))},
                {**group, "params": list(range(len(weights), len(params)))},
            ],
        },
    }


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trunk() -> OrderedDict:
    return OrderedDict(resnet50_state())


@pytest.fixture(scope="module")
def projector() -> OrderedDict:
    return make_projector()


@pytest.fixture(scope="module")
def vissl_model(trunk, projector) -> dict:
    return {
        "trunk": OrderedDict(("_feature_blocks." + k, v) for k, v in trunk.items()),
        "heads": OrderedDict((vissl_head_name(k), v) for k, v in projector.items()),
    }


@pytest.fixture(scope="module")
def repo_model(trunk, projector) -> OrderedDict:
    model = OrderedDict(("module.backbone." + k, v) for k, v in trunk.items())
    model.update(("module.projector." + k, v) for k, v in projector.items())
    gen = torch.Generator().manual_seed(7)
    model["module.bn.running_mean"] = 0.1 * torch.randn(8192, generator=gen)
    model["module.bn.running_var"] = 0.5 + torch.rand(8192, generator=gen)
    model["module.bn.num_batches_tracked"] = torch.tensor(625000)
    return model


@pytest.fixture(scope="module")
def vissl_file(vissl_model, module_tmp):
    path = subfolder(module_tmp, "barlow_vissl") / VISSL_URL.rsplit("/", 1)[-1]
    return save_vissl(vissl_model["trunk"], vissl_model["heads"], path)


@pytest.fixture(scope="module")
def repo_file(repo_model, module_tmp):
    path = subfolder(module_tmp, "barlow_repo") / "checkpoint.pth"
    torch.save(repo_checkpoint(repo_model), path)
    return path


@pytest.fixture(scope="module")
def encoder(vissl_file):
    return create_encoder("barlow", weights_path=vissl_file)


# --- tests ---------------------------------------------------------------------------


def test_both_sources_state_notes():
    """(Its layers, sources, licences and preprocessing are checked with every
    family's in test_encoder_common.)"""
    assert all(s.notes for s in get_registry().specs["barlow"].spec.weights)


def test_the_synthetic_vissl_file_pickles_the_filter_like_the_published_one(vissl_file):
    with zipfile.ZipFile(vissl_file) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert data[:2] == b"\x80\x02"
    assert b"c__builtin__\ngetattr\n" in data and b"cvissl.optimizers.lars\n_LARS\n" in data
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(vissl_file)
    assert sorted(unsafe) == ["builtins.getattr", "vissl.optimizers.lars._LARS"]


def test_vissl_file_loads_strictly(encoder, vissl_model):
    assert encoder.weights_id == "vissl"
    net = encoder.network.state_dict()
    assert torch.equal(net["trunk.layer4.2.bn3.running_var"], vissl_model["trunk"]["_feature_blocks.layer4.2.bn3.running_var"])
    assert torch.equal(net["heads.head.4.running_mean"], vissl_model["heads"]["1.clf.1.running_mean"])
    assert torch.equal(net["heads.head.6.weight"], vissl_model["heads"]["2.clf.0.weight"])


def test_the_stand_ins_are_scoped_to_the_load(vissl_file):
    before = set(map(str, torch.serialization.get_safe_globals()))
    assert "heads.head.6.weight" in barlow.vissl_state(vissl_file)
    assert set(map(str, torch.serialization.get_safe_globals())) == before
    with pytest.raises(pickle.UnpicklingError):
        torch.load(vissl_file, weights_only=True, mmap=True)


@pytest.mark.slow
def test_repo_file_gives_the_same_network(repo_file, encoder):
    """Same tensors under the repository's names: the same module, with the loss's
    own batch norm (module.bn) left out."""
    repo = create_encoder("barlow@repo", weights_path=repo_file)
    assert repo.weights_id == "repo"
    got, expected = repo.network.state_dict(), encoder.network.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_repo_keys_other_than_the_loss_norm_are_not_dropped(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 1, "model": {"module.extra.weight": torch.zeros(3)}, "optimizer": {}}, path)
    with pytest.raises(RcdmError, match="module.extra.weight"):
        create_encoder("barlow@repo", weights_path=path)


@contextmanager
def script_module(name: str, fn):
    """A training script's function as pickle sees it when the script runs as
    ``name``: pickled by reference as ``name.exclude_bias_and_norm``."""
    module = types.ModuleType(name)
    fn.__module__, fn.__qualname__ = name, "exclude_bias_and_norm"
    module.exclude_bias_and_norm = fn
    saved = sys.modules.get(name)
    sys.modules[name] = module
    try:
        yield fn
    finally:
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved


@pytest.mark.parametrize("script", ["__main__", "__mp_main__"])
def test_older_repo_checkpoints_pickling_the_filter_load(tmp_path, script):
    """Before ljng, the param groups held the training script's function, pickled as
    __main__ or (in spawned workers) __mp_main__."""

    def exclude_bias_and_norm(p):
        return p.ndim == 1

    path = tmp_path / "checkpoint.pth"
    with script_module(script, exclude_bias_and_norm) as fn:
        group = {"weight_decay_filter": fn, "lars_adaptation_filter": fn, "params": [0]}
        torch.save({"epoch": 1, "model": {"module.backbone.conv1.weight": torch.ones(1)}, "optimizer": {"param_groups": [group]}}, path)
    with pytest.raises(pickle.UnpicklingError, match=f"{script}.exclude_bias_and_norm"):
        torch.load(path, weights_only=True)
    assert set(barlow.repo_state(path)) == {"trunk.conv1.weight"}


@pytest.mark.slow
def test_each_source_wants_its_own_layout(vissl_file, repo_file):
    with pytest.raises(RcdmError, match="classy_state_dict"):
        create_encoder("barlow", weights_path=repo_file)
    with pytest.raises(RcdmError, match=r"not the Barlow Twins repository's checkpoint .*: it holds classy_state_dict \(dict\)"):
        create_encoder("barlow@repo", weights_path=vissl_file)


@pytest.mark.parametrize(
    "damage, part, key, named",
    [
        pytest.param(_renamed, "trunk", "_feature_blocks.layer3.4.bn2.weight", "trunk.layer3.4.bn2.weight", marks=pytest.mark.slow),
        (_missing, "heads", "2.clf.0.weight", "heads.head.6.weight"),
        pytest.param(_reshaped, "heads", "1.clf.1.running_var", "heads.head.4.running_var", marks=pytest.mark.slow),
    ],
    ids=["renamed", "missing", "wrong-shape"],
)
def test_a_damaged_file_is_refused_naming_the_key(vissl_model, tmp_path, damage, part, key, named):
    damaged = {**vissl_model, part: damage(vissl_model[part], key)}
    path = save_vissl(damaged["trunk"], damaged["heads"], tmp_path / "damaged.torch")
    with pytest.raises(RcdmError) as err:
        create_encoder("barlow", weights_path=path)
    assert named in str(err.value)


def test_gradients_reach_the_input(encoder):
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    encoder(x, "head").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _torchvision_trunk(trunk) -> nn.Module:
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()
    net.load_state_dict({k[len("_feature_blocks."):]: v for k, v in trunk.items()}, strict=True)
    return net.eval()


def _projector_by_hand(heads, feats):
    p = lambda name: heads[name]  # noqa: E731
    bn = lambda h, i: F.batch_norm(  # noqa: E731
        h, p(f"{i}.running_mean"), p(f"{i}.running_var"), p(f"{i}.weight"), p(f"{i}.bias"), training=False, eps=1e-5
    )
    h = F.relu(bn(F.linear(feats, p("0.clf.0.weight")), "0.clf.1"))
    h = F.relu(bn(F.linear(h, p("1.clf.0.weight")), "1.clf.1"))
    return F.linear(h, p("2.clf.0.weight"))


def test_numbers_match_an_independent_computation(vissl_model, encoder):
    x = torch.rand(2, 3, 128, 128)  # any size the trunk takes; smaller is quicker
    ref = _torchvision_trunk(vissl_model["trunk"])
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        z = (x - mean) / std
        stem = ref.maxpool(ref.relu(ref.bn1(ref.conv1(z))))
        l3 = ref.layer3(ref.layer2(ref.layer1(stem)))
        feats = ref.layer4(l3).mean(dim=(2, 3))
        head = _projector_by_hand(vissl_model["heads"], feats)
        got = {layer: encoder(x, layer) for layer in DIMS}
    assert {layer: tuple(out.shape) for layer, out in got.items()} == {k: (2, d) for k, d in DIMS.items()}
    assert rel_err(got["backbone"], feats) < 1e-5
    assert rel_err(got["layer3"], l3.mean(dim=(2, 3))) < 1e-5
    assert rel_err(got["head"], head) < 1e-5


# --- what must not load --------------------------------------------------------------


@pytest.mark.parametrize("target", ["other LARS attribute", "attribute of an allowed class"])
def test_the_getattr_stand_in_answers_only_for_the_filter(tmp_path, target):
    """The published file needs ``builtins.getattr`` admitted; the stand-in admits
    that one lookup, not a general getattr on whatever else a file can name."""
    path = tmp_path / "getattr.torch"
    with vissl_lars_importable() as lars:
        other = lars.step if target == "other LARS attribute" else OrderedDict.fromkeys
        torch.save(barlow_vissl_checkpoint(OrderedDict(), OrderedDict(), other), path)
    with pytest.raises(RcdmError, match="refused"):
        create_encoder("barlow", weights_path=path)
