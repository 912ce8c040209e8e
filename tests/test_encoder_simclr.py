"""The SimCLR encoder: VISSL's model-zoo file (2020, legacy torch format), strict
loading, and its numbers checked against torchvision and hand-written head arithmetic
on the file's own tensors."""

from __future__ import annotations

import zipfile
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import rel_err, subfolder
from rcdm_cli.encoders import create_encoder
from rcdm_cli.errors import RcdmError
from rcdm_cli.plugin import IMAGENET_MEAN, IMAGENET_STD
from synthetic import resnet50_state, simclr_vissl_checkpoint, state_from_shapes

DIMS = {"backbone": 2048, "layer3": 1024, "head": 128}
HEAD_SHAPES = {
    "0.clf.0.weight": (2048, 2048),
    "0.clf.0.bias": (2048,),
    "1.clf.0.weight": (128, 2048),
    "1.clf.0.bias": (128,),
}


def published_checkpoint(trunk=None, heads=None, seed: int = 0) -> dict:
    """model_final_checkpoint_phase999.torch with the given trunk and heads, or
    random ones."""
    trunk = OrderedDict(resnet50_state(prefix="_feature_blocks.", seed=seed)) if trunk is None else trunk
    heads = OrderedDict(state_from_shapes(HEAD_SHAPES, seed=seed + 1)) if heads is None else heads
    return simclr_vissl_checkpoint(trunk, heads)


def save_legacy(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return published_checkpoint()


@pytest.fixture(scope="module")
def model(checkpoint) -> dict:
    return checkpoint["classy_state_dict"]["base_model"]["model"]


@pytest.fixture(scope="module")
def weights_file(checkpoint, module_tmp):
    return save_legacy(checkpoint, subfolder(module_tmp, "simclr") / "model_final_checkpoint_phase999.torch")


@pytest.fixture(scope="module")
def encoder(weights_file):
    return create_encoder("simclr", weights_path=weights_file)


def test_legacy_format_file_loads_strictly(weights_file, encoder, model):
    assert not zipfile.is_zipfile(weights_file)
    assert encoder.weights_id == "vissl"
    net = encoder.network.state_dict()
    assert torch.equal(net["trunk.layer4.2.conv3.weight"], model["trunk"]["_feature_blocks.layer4.2.conv3.weight"])
    assert torch.equal(net["heads.head.2.weight"], model["heads"]["1.clf.0.weight"])


def test_zip_format_file_loads_too(checkpoint, tmp_path):
    path = tmp_path / "resaved.torch"
    torch.save(checkpoint, path)
    assert create_encoder("simclr", weights_path=path).rep_dim("head") == 128


def _renamed(model, part, key):
    return {**model, part: OrderedDict((k + "_renamed" if k == key else k, v) for k, v in model[part].items())}


def _missing(model, part, key):
    return {**model, part: OrderedDict((k, v) for k, v in model[part].items() if k != key)}


def _reshaped(model, part, key):
    shape = model[part][key].shape
    return {**model, part: OrderedDict(model[part], **{key: torch.zeros(*shape[:-1], shape[-1] + 1)})}


@pytest.mark.parametrize(
    "damage, part, key, named",
    [
        (_renamed, "trunk", "_feature_blocks.layer2.1.conv2.weight", "trunk.layer2.1.conv2.weight"),
        (_missing, "heads", "1.clf.0.bias", "heads.head.2.bias"),
        (_reshaped, "heads", "0.clf.0.weight", "heads.head.0.weight"),
    ],
    ids=["renamed", "missing", "wrong-shape"],
)
def test_a_damaged_file_is_refused_naming_the_key(model, tmp_path, damage, part, key, named):
    damaged = damage(model, part, key)
    path = save_legacy(published_checkpoint(damaged["trunk"], damaged["heads"]), tmp_path / "damaged.torch")
    with pytest.raises(RcdmError) as err:
        create_encoder("simclr", weights_path=path)
    assert named in str(err.value)


def test_a_file_in_no_vissl_form_is_refused(model, tmp_path):
    path = save_legacy({"state_dict": {"encoder.conv1.weight": torch.zeros(1)}, "epoch": 1}, tmp_path / "other.torch")
    with pytest.raises(RcdmError, match=r"not in VISSL's layout \(classy_state_dict/base_model/model.*found: epoch, state_dict"):
        create_encoder("simclr", weights_path=path)
    # a flat state dict in another naming (torchvision's, no trunk)
    torch.save(resnet50_state(), tmp_path / "torchvision.pth")
    with pytest.raises(RcdmError, match=r"not in VISSL's layout .*found: bn1\.bias"):
        create_encoder("simclr", weights_path=tmp_path / "torchvision.pth")


def test_gradients_reach_the_input(encoder):
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    encoder(x, "head").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _torchvision_trunk(trunk) -> nn.Module:
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()
    net.load_state_dict({k[len("_feature_blocks."):]: v for k, v in trunk.items()}, strict=True)
    return net.eval()


def test_numbers_match_an_independent_computation(model, encoder):
    x = torch.rand(2, 3, 128, 128)  # any size the trunk takes; smaller is quicker
    ref = _torchvision_trunk(model["trunk"])
    h = model["heads"]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        z = (x - mean) / std
        feats = ref(z)
        stem = ref.maxpool(ref.relu(ref.bn1(ref.conv1(z))))
        layer3 = ref.layer3(ref.layer2(ref.layer1(stem))).mean(dim=(2, 3))
        head = F.linear(F.relu(F.linear(feats, h["0.clf.0.weight"], h["0.clf.0.bias"])), h["1.clf.0.weight"], h["1.clf.0.bias"])
        got = {layer: encoder(x, layer) for layer in DIMS}
    assert {layer: tuple(out.shape) for layer, out in got.items()} == {k: (2, d) for k, d in DIMS.items()}
    assert rel_err(got["backbone"], feats) < 1e-5
    assert rel_err(got["layer3"], layer3) < 1e-5
    assert rel_err(got["head"], head) < 1e-5
    # the ReLU between the two layers is there: without it the numbers differ
    no_relu = F.linear(F.linear(feats, h["0.clf.0.weight"], h["0.clf.0.bias"]), h["1.clf.0.weight"], h["1.clf.0.bias"])
    assert rel_err(got["head"], no_relu) > 1e-2
