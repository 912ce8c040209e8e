"""The SwAV encoder: the published file's layout, strict loading, and its numbers
checked against torchvision and hand-written head arithmetic on the file's tensors."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import rel_err, subfolder
from rcdm_cli.encoders import create_encoder
from rcdm_cli.errors import RcdmError
from synthetic import missing as _missing
from synthetic import renamed as _renamed
from synthetic import reshaped as _reshaped
from synthetic import resnet50_state, state_from_shapes

SWAV_MEAN = (0.485, 0.456, 0.406)
SWAV_STD = (0.228, 0.224, 0.225)
DIMS = {"backbone": 2048, "layer3": 1024, "head": 128, "prototypes": 3000}
HEAD_SHAPES = {
    "projection_head.0.weight": (2048, 2048),
    "projection_head.0.bias": (2048,),
    "projection_head.1.weight": (2048,),
    "projection_head.1.bias": (2048,),
    "projection_head.1.running_mean": (2048,),
    "projection_head.1.running_var": (2048,),
    "projection_head.1.num_batches_tracked": (),
    "projection_head.3.weight": (128, 2048),
    "projection_head.3.bias": (128,),
}


def published_state(seed: int = 0) -> OrderedDict:
    """swav_800ep_pretrain.pth.tar's layout: DDP's ``module.`` prefix on the trunk
    (torchvision names, no fc), the projection head, and 3000 prototype rows whose
    norms are near but not exactly 1, as SwAV leaves them after its last step."""
    state = OrderedDict(resnet50_state(prefix="module.", seed=seed))
    state.update(state_from_shapes(HEAD_SHAPES, prefix="module.", seed=seed + 1))
    gen = torch.Generator().manual_seed(seed + 2)
    rows = F.normalize(torch.randn(3000, 128, generator=gen), dim=1)
    state["module.prototypes.weight"] = rows * (1.0 + 0.1 * torch.rand(3000, 1, generator=gen))
    return state


@pytest.fixture(scope="module")
def state() -> OrderedDict:
    return published_state()


@pytest.fixture(scope="module")
def weights_file(state, module_tmp):
    path = subfolder(module_tmp, "swav") / "swav_800ep_pretrain.pth.tar"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def encoder(weights_file):
    return create_encoder("swav", weights_path=weights_file)


def test_published_layout_loads_with_native_preprocessing(encoder, state):
    """Every layer's width is checked on real outputs in the numerical test below."""
    assert encoder.weights_id == "800ep"
    assert torch.equal(encoder.std.flatten(), torch.tensor(SWAV_STD))
    assert torch.equal(encoder.network.heads["prototypes"].weight, state["module.prototypes.weight"])


def test_training_checkpoint_wrapper_is_accepted(state, encoder, tmp_path):
    """SwAV's own saver writes epoch, state_dict and optimizer state."""
    wrapped = {
        "epoch": 800,
        "state_dict": state,
        "optimizer": {
            "state": {},
            "param_groups": [{"lr": 0.0048, "momentum": 0.9, "weight_decay": 1e-6, "params": [0, 1]}],
        },
    }
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(wrapped, path)
    loaded = create_encoder("swav", weights_path=path).network.state_dict()
    expected = encoder.network.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    "damage, key",
    [
        (_renamed, "module.projection_head.3.weight"),
        (_missing, "module.prototypes.weight"),
        (_reshaped, "module.layer3.2.conv2.weight"),
    ],
    ids=["renamed", "missing", "wrong-shape"],
)
def test_a_damaged_file_is_refused_naming_the_key(state, tmp_path, damage, key):
    path = tmp_path / "damaged.pth.tar"
    torch.save(damage(state, key), path)
    with pytest.raises(RcdmError) as err:
        create_encoder("swav", weights_path=path)
    assert key in str(err.value)


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth.tar"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(RcdmError, match="not SwAV's state dict"):
        create_encoder("swav", weights_path=path)


def test_gradients_reach_the_input(encoder):
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    encoder(x, "prototypes").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _swav_trunk_reference(state) -> nn.Module:
    """torchvision's ResNet-50 with the file's trunk tensors and SwAV's stem: a
    one-pixel zero pad applied outside, then the 7x7 convolution with padding 2."""
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()
    heads = ("module.projection_head.", "module.prototypes.")
    trunk = {k[len("module."):]: v for k, v in state.items() if not k.startswith(heads)}
    net.load_state_dict(trunk, strict=True)
    net.conv1.padding = (2, 2)
    return net.eval()


def _head_by_hand(state, feats):
    p = lambda name: state[f"module.projection_head.{name}"]  # noqa: E731
    h = F.linear(feats, p("0.weight"), p("0.bias"))
    h = F.batch_norm(h, p("1.running_mean"), p("1.running_var"), p("1.weight"), p("1.bias"), training=False, eps=1e-5)
    h = F.normalize(F.linear(F.relu(h), p("3.weight"), p("3.bias")), dim=1)
    return h


def test_numbers_match_an_independent_computation(state, encoder):
    x = torch.rand(2, 3, 224, 224)
    ref = _swav_trunk_reference(state)
    mean, std = torch.tensor(SWAV_MEAN).view(1, 3, 1, 1), torch.tensor(SWAV_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        z = F.pad((x - mean) / std, (1, 1, 1, 1))
        feats = ref(z)
        stem = ref.maxpool(ref.relu(ref.bn1(ref.conv1(z))))
        layer3 = ref.layer3(ref.layer2(ref.layer1(stem))).mean(dim=(2, 3))
        head = _head_by_hand(state, feats)
        scores = F.linear(head, state["module.prototypes.weight"])
        got = {layer: encoder(x, layer) for layer in DIMS}
    assert {layer: tuple(out.shape) for layer, out in got.items()} == {k: (2, d) for k, d in DIMS.items()}
    assert rel_err(got["backbone"], feats) < 1e-5
    assert rel_err(got["layer3"], layer3) < 1e-5
    assert rel_err(got["head"], head) < 1e-5
    assert torch.allclose(got["head"].norm(dim=1), torch.ones(2))
    assert rel_err(got["prototypes"], scores) < 1e-5
    # the stored rows are used as they are, not renormalised
    renormalised = F.linear(head, F.normalize(state["module.prototypes.weight"], dim=1))
    assert rel_err(got["prototypes"], renormalised) > 1e-2
