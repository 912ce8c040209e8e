"""The dino encoders (ResNet-50, ViT-S/16, ViT-B/16) on synthetic full checkpoints in
the published layout: student, teacher (with the prototype layer), optimizer with
numpy scalars, argparse arguments holding a path, the loss centre, the fp16 scaler.

The references are computed independently: torchvision's ResNet-50, DINO's ViT
forward written out with torch.nn.functional, and the heads by hand."""

from __future__ import annotations

import argparse
import pathlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import rel_err, subfolder
from rcdm_cli.checkpoint.released import RELEASED
from rcdm_cli.encoders import create_encoder, get_registry, reset_registry
from rcdm_cli.encoders.weights import encoder_cache_dir
from rcdm_cli.errors import RcdmError
from synthetic import random_tensor, resnet50_state

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
URL = "https://dl.fbaipublicfiles.com/dino/{0}/{0}_full_checkpoint.pth"


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_registry()
    yield
    reset_registry()


# --- synthetic published files ------------------------------------------------------------


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: random_tensor(k, s, gen) for k, s in shapes.items()}


def resnet50_teacher(seed: int = 0) -> dict[str, torch.Tensor]:
    """The ResNet-50 teacher: torchvision's keys under backbone. (no fc), the 2-layer
    head with batch norm, and the plain 60000-way prototype layer."""
    state = resnet50_state(prefix="backbone.", seed=seed)
    state.update(
        _random(
            {
                "head.mlp.0.weight": (4096, 2048),
                "head.mlp.0.bias": (4096,),
                "head.mlp.1.weight": (4096,),
                "head.mlp.1.bias": (4096,),
                "head.mlp.1.running_mean": (4096,),
                "head.mlp.1.running_var": (4096,),
                "head.mlp.1.num_batches_tracked": (),
                "head.mlp.3.weight": (256, 4096),
                "head.mlp.3.bias": (256,),
            },
            seed + 1,
        )
    )
    state["head.last_layer.weight"] = 0.01 * torch.randn(60000, 256, generator=torch.Generator().manual_seed(seed + 2))
    return state


def vit_teacher(dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A ViT-x/16 teacher: timm's keys under backbone. (no head), the 3-layer head and
    the weight-normed 65536-way prototype layer."""
    shapes: dict[str, tuple[int, ...]] = {
        "backbone.cls_token": (1, 1, dim),
        "backbone.pos_embed": (1, 197, dim),
        "backbone.patch_embed.proj.weight": (dim, 3, 16, 16),
        "backbone.patch_embed.proj.bias": (dim,),
    }
    for i in range(12):
        p = f"backbone.blocks.{i}."
        shapes.update(
            {
                p + "norm1.weight": (dim,),
                p + "norm1.bias": (dim,),
                p + "attn.qkv.weight": (3 * dim, dim),
                p + "attn.qkv.bias": (3 * dim,),
                p + "attn.proj.weight": (dim, dim),
                p + "attn.proj.bias": (dim,),
                p + "norm2.weight": (dim,),
                p + "norm2.bias": (dim,),
                p + "mlp.fc1.weight": (4 * dim, dim),
                p + "mlp.fc1.bias": (4 * dim,),
                p + "mlp.fc2.weight": (dim, 4 * dim),
                p + "mlp.fc2.bias": (dim,),
            }
        )
    shapes.update(
        {
            "backbone.norm.weight": (dim,),
            "backbone.norm.bias": (dim,),
            "head.mlp.0.weight": (2048, dim),
            "head.mlp.0.bias": (2048,),
            "head.mlp.2.weight": (2048, 2048),
            "head.mlp.2.bias": (2048,),
            "head.mlp.4.weight": (256, 2048),
            "head.mlp.4.bias": (256,),
        }
    )
    state = _random(shapes, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    # visible class token and position embedding (a missing addition must show)
    state["backbone.cls_token"] = 0.5 * torch.randn(1, 1, dim, generator=gen)
    state["backbone.pos_embed"] = 0.5 * torch.randn(1, 197, dim, generator=gen)
    state["head.last_layer.weight_g"] = torch.ones(65536, 1)
    state["head.last_layer.weight_v"] = 0.01 * torch.randn(65536, 256, generator=gen)
    return state


def full_checkpoint(teacher: dict, arch: str, differs: tuple[str, ...], teacher_prefix: str = "") -> dict:
    """main_dino.py's save_dict. The student shares the teacher's tensors (stored once)
    except ``differs``, so that loading the student instead would change the outputs."""
    student = {"module." + k: v for k, v in teacher.items()}
    for k in differs:
        student["module." + k] = teacher[k] + 0.5
    out_dim = 60000 if arch == "resnet50" else 65536
    return {
        "student": student,
        "teacher": {teacher_prefix + k: v for k, v in teacher.items()},
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.zeros(4)}},
            "param_groups": [
                {"lr": np.float64(0.0003), "weight_decay": np.float64(0.04), "momentum": 0.9, "params": [0]},
                {"lr": np.float64(0.0003), "weight_decay": 0.0, "momentum": 0.9, "params": [1]},
            ],
        },
        "epoch": 800,
        "args": argparse.Namespace(
            arch=arch,
            out_dim=out_dim,
            norm_last_layer=True,
            lr=0.0005,
            output_dir=pathlib.PosixPath("/checkpoint/dino"),
        ),
        "dino_loss": {"center": torch.zeros(1, out_dim)},
        "fp16_scaler": {
            "scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0
        },
    }


@pytest.fixture(scope="module")
def rn50(module_tmp):
    """The published ResNet-50 file: DINO wraps a teacher with batch norms in
    DistributedDataParallel, so every teacher key is saved under ``module.``."""
    teacher = resnet50_teacher()
    path = subfolder(module_tmp, "dino") / "dino_resnet50_pretrain_full_checkpoint.pth"
    checkpoint = full_checkpoint(teacher, "resnet50", ("backbone.bn1.weight", "head.mlp.3.bias"), teacher_prefix="module.")
    torch.save(checkpoint, path)
    return path, teacher


@pytest.fixture(scope="module")
def vits16(module_tmp):
    teacher = vit_teacher(384)
    path = subfolder(module_tmp, "dino") / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save(full_checkpoint(teacher, "vit_small", ("backbone.norm.weight", "head.mlp.4.bias")), path)
    return path, teacher


# --- references -----------------------------------------------------------------------------


def torchvision_resnet50(teacher: dict) -> nn.Module:
    import torchvision

    net = torchvision.models.resnet50()
    net.fc = nn.Identity()
    net.load_state_dict({k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")})
    return net.eval()


def resnet50_head(t: dict, x: torch.Tensor) -> torch.Tensor:
    x = F.linear(x, t["head.mlp.0.weight"], t["head.mlp.0.bias"])
    x = F.batch_norm(
        x, t["head.mlp.1.running_mean"], t["head.mlp.1.running_var"], t["head.mlp.1.weight"], t["head.mlp.1.bias"],
        training=False, eps=1e-5,
    )
    return F.linear(F.gelu(x), t["head.mlp.3.weight"], t["head.mlp.3.bias"])


def vit_head(t: dict, x: torch.Tensor) -> torch.Tensor:
    x = F.gelu(F.linear(x, t["head.mlp.0.weight"], t["head.mlp.0.bias"]))
    x = F.gelu(F.linear(x, t["head.mlp.2.weight"], t["head.mlp.2.bias"]))
    return F.linear(x, t["head.mlp.4.weight"], t["head.mlp.4.bias"])


def dino_vit(t: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """DINO's vision_transformer.py forward (prepare_tokens, blocks, norm, [:, 0])
    written out: explicit attention, LayerNorm eps 1e-6."""
    w = lambda name: t["backbone." + name]  # noqa: E731
    x = F.conv2d(x, w("patch_embed.proj.weight"), w("patch_embed.proj.bias"), stride=16).flatten(2).transpose(1, 2)
    b, _, d = x.shape
    x = torch.cat([w("cls_token").expand(b, -1, -1), x], dim=1) + w("pos_embed")
    n = x.shape[1]

    def norm(name, y):
        return F.layer_norm(y, (d,), w(name + ".weight"), w(name + ".bias"), eps=1e-6)

    for i in range(12):
        p = f"blocks.{i}."
        qkv = F.linear(norm(p + "norm1", x), w(p + "attn.qkv.weight"), w(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, d)
        x = x + F.linear(y, w(p + "attn.proj.weight"), w(p + "attn.proj.bias"))
        y = F.gelu(F.linear(norm(p + "norm2", x), w(p + "mlp.fc1.weight"), w(p + "mlp.fc1.bias")))
        x = x + F.linear(y, w(p + "mlp.fc2.weight"), w(p + "mlp.fc2.bias"))
    return norm("norm", x)[:, 0]


# --- registration -------------------------------------------------------------------------


def test_the_three_dino_encoders_are_registered_by_the_dino_plugin():
    """(Their layers, sources and preprocessing are checked with every family's in
    test_encoder_common.)"""
    registry = get_registry()
    for name in ("dino", "dino-vits16", "dino-vitb16"):
        entry = registry.specs[name]
        assert entry.plugin.startswith("rcdm ") and entry.spec.build.__module__ == "rcdm_plugins.dino"
        (source,) = entry.spec.weights
        assert source.license.startswith("Apache-2.0") and "teacher" in source.notes


def test_dino_is_the_encoder_of_the_released_dino_models():
    spec = get_registry().specs["dino"].spec
    released = [c for c in RELEASED.values() if c.encoder == "dino"]
    assert {c.layer for c in released} == {"backbone", "head"}
    for c in released:
        assert spec.layers[c.layer][0] == c.rep_dim
        assert spec.weight_source(c.encoder_weights) is spec.weight_source(None)


def test_offline_error_names_the_full_checkpoint_url(monkeypatch):
    monkeypatch.setenv("RCDM_OFFLINE", "1")
    with pytest.raises(RcdmError) as info:
        create_encoder("dino-vits16")
    message = str(info.value)
    assert URL.format("dino_deitsmall16_pretrain") in message
    assert str(encoder_cache_dir() / "dino_deitsmall16_pretrain_full_checkpoint.pth") in message


# --- ResNet-50 ----------------------------------------------------------------------------


def test_dino_resnet50_matches_torchvision_and_the_head_by_hand(rn50):
    path, teacher = rn50
    enc = create_encoder("dino", weights_path=path)
    x = torch.rand(2, 3, 96, 96)  # any size works for a ResNet; smaller is quicker on a CPU
    reference = torchvision_resnet50(teacher)
    with torch.no_grad():
        xn = (x - MEAN) / STD
        pooled = reference(xn)
        r = reference
        layer3 = r.layer3(r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(xn))))))).mean(dim=(2, 3))
        head = resnet50_head(teacher, pooled)
        got = {layer: enc(x, layer) for layer in ("backbone", "layer3", "head")}
    assert rel_err(got["backbone"], pooled) < 1e-5
    assert rel_err(got["layer3"], layer3) < 1e-5
    assert rel_err(got["head"], head) < 1e-5
    # the bottleneck before DINO's L2 normalisation
    assert not torch.allclose(got["head"].norm(dim=1), torch.ones(2), atol=1e-2)
    # differentiable with respect to the input (attacks)
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    enc(x, "head").sum().backward()
    assert x.grad.abs().sum() > 0


def test_the_main_fixture_is_the_published_ddp_layout(rn50):
    teacher = torch.load(rn50[0], weights_only=False)["teacher"]
    assert all(k.startswith("module.backbone.") or k.startswith("module.head.") for k in teacher)
    assert "module.head.last_layer.weight" in teacher


def test_an_unprefixed_or_trimmed_teacher_loads_the_same(rn50, tmp_path):
    path, teacher = rn50
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = create_encoder("dino", weights_path=path)(x, "head")
    # a teacher saved without DistributedDataParallel's "module."
    plain = full_checkpoint(teacher, "resnet50", ())
    torch.save(plain, tmp_path / "plain.pth")
    # no prototype layer: not needed by any layer, so not required
    trimmed = {k: v for k, v in teacher.items() if not k.startswith("head.last_layer")}
    torch.save({"teacher": trimmed}, tmp_path / "trimmed.pth")
    for name in ("plain.pth", "trimmed.pth"):
        with torch.no_grad():
            assert torch.equal(create_encoder("dino", weights_path=tmp_path / name)(x, "head"), expected)


@pytest.mark.slow
def test_files_not_in_the_published_layout_are_refused_by_name(rn50, tmp_path):
    _, teacher = rn50
    # a backbone-only release (a plain torchvision state dict) or any file without a teacher
    backbone_only = {k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")}
    torch.save(backbone_only, tmp_path / "backbone.pth")
    with pytest.raises(RcdmError, match=r"holds no backbone\.\* keys \(found: bn1\..*backbone-only release has no projection head"):
        create_encoder("dino", weights_path=tmp_path / "backbone.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(RcdmError, match=r"no 'teacher' state dict and is not one itself \(found: Tensor\).*_full_checkpoint\.pth"):
        create_encoder("dino", weights_path=tmp_path / "tensor.pth")
    torch.save({"epoch": 100, "args": {}}, tmp_path / "other.pth")
    with pytest.raises(RcdmError, match=r"no 'teacher' state dict and is not one itself \(found: args, epoch\)"):
        create_encoder("dino", weights_path=tmp_path / "other.pth")

    # a missing head key is named as the file spells it
    broken = {k: v for k, v in teacher.items() if k != "head.mlp.3.bias"}
    torch.save({"teacher": broken}, tmp_path / "nohead.pth")
    message = "(teacher) does not match the expected layout: 1 missing keys (head.mlp.3.bias)"
    with pytest.raises(RcdmError, match=re.escape(message)):
        create_encoder("dino", weights_path=tmp_path / "nohead.pth")
    # a 3-layer ViT-style head is not the ResNet-50's
    wrong = dict(teacher, **{"head.mlp.3.weight": torch.zeros(2048, 4096)})
    torch.save({"teacher": wrong}, tmp_path / "shape.pth")
    with pytest.raises(RcdmError, match=re.escape("head.mlp.3.weight is [2048, 4096], expected [256, 4096]")):
        create_encoder("dino", weights_path=tmp_path / "shape.pth")
    # "module." on some keys only is not stripped: the keys are reported
    partly = dict(teacher)
    partly["module.head.mlp.0.bias"] = partly.pop("head.mlp.0.bias")
    torch.save({"teacher": partly}, tmp_path / "partly.pth")
    with pytest.raises(RcdmError, match=re.escape("unexpected keys (module.head.mlp.0.bias)")):
        create_encoder("dino", weights_path=tmp_path / "partly.pth")


class _NotData:
    pass


def test_a_checkpoint_pickling_arbitrary_objects_is_refused(rn50, tmp_path):
    _, teacher = rn50
    torch.save({"teacher": {"head.mlp.0.bias": teacher["head.mlp.0.bias"]}, "args": _NotData()}, tmp_path / "evil.pth")
    with pytest.raises(RcdmError, match="refused to load"):
        create_encoder("dino", weights_path=tmp_path / "evil.pth")


def test_the_cached_published_file_is_used(rn50):
    path, _ = rn50
    dest = encoder_cache_dir() / "dino_resnet50_pretrain_full_checkpoint.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(path)
    enc = create_encoder("dino")
    assert enc.weights_id == "resnet50" and enc.weights_file == str(dest)
    assert enc.describe()["layers"] == {"backbone": 2048, "layer3": 1024, "head": 256}


# --- ViTs ---------------------------------------------------------------------------------


def _check_vit(enc, teacher: dict, heads: int, dim: int, batch: int) -> None:
    # DINO's LayerNorms: eps 1e-6 everywhere (timm's nn.LayerNorm default would be 1e-5)
    norms = [m for m in enc.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 12 + 1 and {m.eps for m in norms} == {1e-6}
    x = torch.rand(batch, 3, 224, 224)
    with torch.no_grad():
        cls = dino_vit(teacher, (x - MEAN) / STD, heads)
        head = vit_head(teacher, cls)
        backbone_out, head_out = enc(x, "backbone"), enc(x, "head")
    assert backbone_out.shape == (batch, dim) and head_out.shape == (batch, 256)
    assert rel_err(backbone_out, cls) < 1e-5
    assert rel_err(head_out, head) < 1e-5
    assert not torch.allclose(head_out.norm(dim=1), torch.ones(batch), atol=1e-2)


@pytest.mark.slow
def test_dino_vits16_matches_dino_vit_written_out(vits16):
    path, teacher = vits16
    enc = create_encoder("dino-vits16", weights_path=path)
    _check_vit(enc, teacher, heads=6, dim=384, batch=2)
    x = torch.rand(1, 3, 224, 224, requires_grad=True)
    enc(x, "head").sum().backward()
    assert x.grad.abs().sum() > 0


def test_vit_checkpoint_errors_name_the_file_keys(vits16, tmp_path):
    _, teacher = vits16
    # the ResNet-50 encoder given a ViT file
    with pytest.raises(RcdmError, match=r"missing keys \(backbone\.conv1\.weight"):
        create_encoder("dino", weights_path=vits16[0])
    # timm has no ViT classifier under DINO's names: an extra key is an error, not ignored
    extra = dict(teacher, **{"backbone.head.weight": torch.zeros(1000, 384)})
    torch.save({"teacher": extra}, tmp_path / "extra.pth")
    with pytest.raises(RcdmError, match=re.escape("unexpected keys (backbone.head.weight)")):
        create_encoder("dino-vits16", weights_path=tmp_path / "extra.pth")


@pytest.mark.slow
def test_dino_vitb16_matches_dino_vit_written_out(tmp_path, vits16):
    teacher = vit_teacher(768, seed=3)
    path = tmp_path / "dino_vitbase16_pretrain_full_checkpoint.pth"
    torch.save(full_checkpoint(teacher, "vit_base", ("backbone.norm.weight", "head.mlp.4.bias")), path)
    enc = create_encoder("dino-vitb16", weights_path=path)
    _check_vit(enc, teacher, heads=12, dim=768, batch=1)
    # a ViT-S file given to the ViT-B encoder
    with pytest.raises(RcdmError, match=re.escape("backbone.cls_token is [1, 1, 384], expected [1, 1, 768]")):
        create_encoder("dino-vitb16", weights_path=vits16[0])
