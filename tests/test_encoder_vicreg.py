"""The VICReg encoder: the repository's full checkpoint (with its LARS optimizer
state, which pickles the training script's filter function), strict loading, and its
numbers checked against torchvision and hand-written expander arithmetic on the
file's own tensors."""

from __future__ import annotations

import sys
from collections import OrderedDict
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import rel_err, subfolder
from rcdm_cli.encoders import create_encoder
from rcdm_cli.errors import RcdmError
from rcdm_cli.plugin import IMAGENET_MEAN, IMAGENET_STD
from synthetic import missing as _missing
from synthetic import renamed as _renamed
from synthetic import reshaped as _reshaped
from synthetic import bn_shapes, resnet50_state, square_weight, state_from_shapes

DIMS = {"backbone": 2048, "layer3": 1024, "head": 8192}


PROJECTOR_SHAPES = {
    "module.projector.0.weight": (8192, 2048),
    "module.projector.0.bias": (8192,),
    **bn_shapes("module.projector.1", 8192),
    "module.projector.3.weight": (8192, 8192),
    "module.projector.3.bias": (8192,),
    **bn_shapes("module.projector.4", 8192),
    "module.projector.6.weight": (8192, 8192),
}
SQUARE = ("module.projector.3.weight", "module.projector.6.weight")


def exclude_bias_and_norm(p):
    return p.ndim == 1


@contextmanager
def filter_defined_in_main():
    """The training script's filter as pickle sees it when the script runs as
    __main__: pickled by reference as ``__main__.exclude_bias_and_norm``."""
    main = sys.modules["__main__"]
    fn = exclude_bias_and_norm
    saved = (fn.__module__, fn.__qualname__)
    fn.__module__, fn.__qualname__ = "__main__", "exclude_bias_and_norm"
    setattr(main, "exclude_bias_and_norm", fn)
    try:
        yield fn
    finally:
        delattr(main, "exclude_bias_and_norm")
        fn.__module__, fn.__qualname__ = saved


def published_model(seed: int = 0) -> OrderedDict:
    """The DDP model's state dict: ``module.backbone.`` (torchvision names, no fc)
    then ``module.projector.``, in the order the file has them."""
    small = {k: s for k, s in PROJECTOR_SHAPES.items() if k not in SQUARE}
    projector = state_from_shapes(small, seed=seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    projector.update({key: square_weight(gen) for key in SQUARE})
    state = OrderedDict(resnet50_state(prefix="module.backbone.", seed=seed))
    state.update((k, projector[k]) for k in PROJECTOR_SHAPES)
    return state


def published_checkpoint(model, filter_fn) -> dict:
    """resnet50_fullckpt.pth's top level: epoch, the DDP model's state dict, and the
    LARS state (one 'mu' buffer per parameter, stored as the parameter itself so the
    file stays small) whose param group holds the filter function twice."""
    params = [v for k, v in model.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    group = {
        "lr": 0.0,
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "eta": 0.001,
        "weight_decay_filter": filter_fn,
        "lars_adaptation_filter": filter_fn,
        "params": list(range(len(params))),
    }
    return {"epoch": 1000, "model": model, "optimizer": {"state": {i: {"mu": p} for i, p in enumerate(params)}, "param_groups": [group]}}


def save_published(model, path):
    with filter_defined_in_main() as fn:
        torch.save(published_checkpoint(model, fn), path)
    return path


@pytest.fixture(scope="module")
def model() -> OrderedDict:
    return published_model()


@pytest.fixture(scope="module")
def weights_file(model, module_tmp):
    return save_published(model, subfolder(module_tmp, "vicreg") / "resnet50_fullckpt.pth")


@pytest.fixture(scope="module")
def encoder(weights_file):
    return create_encoder("vicreg", weights_path=weights_file)


@pytest.mark.slow
def test_published_layout_loads_strictly(encoder, model):
    assert encoder.weights_id == "fullckpt"
    net = encoder.network.state_dict()
    assert torch.equal(net["trunk.layer4.2.bn3.running_var"], model["module.backbone.layer4.2.bn3.running_var"])
    assert torch.equal(net["heads.head.6.weight"], model["module.projector.6.weight"])


@pytest.mark.slow
def test_the_synthetic_file_pickles_the_filter_like_the_published_one(weights_file):
    assert torch.serialization.get_unsafe_globals_in_checkpoint(weights_file) == ["__main__.exclude_bias_and_norm"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, key, named",
    [
        (_renamed, "module.backbone.layer1.0.bn1.running_var", "trunk.layer1.0.bn1.running_var"),
        (_missing, "module.projector.6.weight", "heads.head.6.weight"),
        (_reshaped, "module.projector.4.running_mean", "heads.head.4.running_mean"),
    ],
    ids=["renamed", "missing", "wrong-shape"],
)
def test_a_damaged_file_is_refused_naming_the_key(model, tmp_path, damage, key, named):
    path = save_published(damage(model, key), tmp_path / "damaged.pth")
    with pytest.raises(RcdmError) as err:
        create_encoder("vicreg", weights_path=path)
    assert named in str(err.value)


def test_a_file_without_the_expander_or_the_model_is_refused(tmp_path):
    path = tmp_path / "resnet50.pth"  # the repository's backbone-only release
    torch.save(OrderedDict(resnet50_state()), path)
    with pytest.raises(RcdmError, match=r"has no expander \(no projector\.\* keys; found bn1\.bias.*use resnet50_fullckpt\.pth"):
        create_encoder("vicreg", weights_path=path)
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "no_model.pth")
    with pytest.raises(RcdmError, match=r"is not VICReg's full checkpoint .*: it holds epoch \(int\), optimizer \(dict\)"):
        create_encoder("vicreg", weights_path=tmp_path / "no_model.pth")


@pytest.mark.slow
def test_gradients_reach_the_input(encoder):
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    encoder(x, "head").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _torchvision_trunk(model) -> nn.Module:
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()
    prefix = "module.backbone."
    net.load_state_dict({k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}, strict=True)
    return net.eval()


def _expander_by_hand(model, feats):
    p = lambda name: model[f"module.projector.{name}"]  # noqa: E731
    bn = lambda h, i: F.batch_norm(  # noqa: E731
        h, p(f"{i}.running_mean"), p(f"{i}.running_var"), p(f"{i}.weight"), p(f"{i}.bias"), training=False, eps=1e-5
    )
    h = F.relu(bn(F.linear(feats, p("0.weight"), p("0.bias")), 1))
    h = F.relu(bn(F.linear(h, p("3.weight"), p("3.bias")), 4))
    return F.linear(h, p("6.weight"))


@pytest.mark.slow
def test_numbers_match_an_independent_computation(model, encoder):
    x = torch.rand(2, 3, 128, 128)  # any size the trunk takes; smaller is quicker
    ref = _torchvision_trunk(model)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        z = (x - mean) / std
        stem = ref.maxpool(ref.relu(ref.bn1(ref.conv1(z))))
        l3 = ref.layer3(ref.layer2(ref.layer1(stem)))
        feats = ref.layer4(l3).mean(dim=(2, 3))
        head = _expander_by_hand(model, feats)
        got = {layer: encoder(x, layer) for layer in DIMS}
    assert {layer: tuple(out.shape) for layer, out in got.items()} == {k: (2, d) for k, d in DIMS.items()}
    assert rel_err(got["backbone"], feats) < 1e-5
    assert rel_err(got["layer3"], l3.mean(dim=(2, 3))) < 1e-5
    assert rel_err(got["head"], head) < 1e-5


def test_only_the_filter_name_is_allowed_under_main(tmp_path):
    """Another __main__ function is not let through by the filter's stand-in."""

    def payload(p):
        return p

    main = sys.modules["__main__"]
    payload.__module__, payload.__qualname__ = "__main__", "payload"
    setattr(main, "payload", payload)
    try:
        path = tmp_path / "other.pth"
        torch.save({"epoch": 1, "model": OrderedDict(), "optimizer": {"param_groups": [{"weight_decay_filter": payload}]}}, path)
    finally:
        delattr(main, "payload")
    with pytest.raises(RcdmError, match="refused"):
        create_encoder("vicreg", weights_path=path)
