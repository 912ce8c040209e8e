"""``--weights PATH`` for every built-in encoder: besides the published file, the same
network as a plain state dict (the published key space without the checkpoint's
wrapping) in a ``.pth`` and in a safetensors file, and the encoder's own
``state_dict()`` as safetensors, all give the representation the published file gives,
at every layer.

The published files are the synthetic ones of each encoder's own tests."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import test_encoder_barlow as barlow_files
import test_encoder_byol as byol_files
import test_encoder_dino as dino_files
import test_encoder_simclr as simclr_files
import test_encoder_swav as swav_files
import test_encoder_vicreg as vicreg_files
from rcdm_cli.encoders import create_encoder, reset_registry
from rcdm_cli.encoders.weights import is_safetensors
from synthetic import resnet50_state

Forms = dict[str, Path]


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_registry()
    yield
    reset_registry()


def _safetensors(state: dict, path: Path) -> Path:
    """Tensors copied out, since safetensors refuses tensors that share memory (as a
    checkpoint's online and momentum networks may)."""
    save_file({k: torch.as_tensor(v).detach().clone().contiguous() for k, v in state.items()}, str(path))
    return path


def _torch(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


# --- one builder per encoder: (published file, other forms) --------------------------------


def supervised(tmp: Path) -> tuple[Path, Forms]:
    state = resnet50_state(with_fc=True)
    published = _torch(state, tmp / "resnet50-0676ba61.pth")  # torchvision's file is a plain state dict
    return published, {"safetensors": _safetensors(state, tmp / "plain.safetensors")}


def dino(tmp: Path) -> tuple[Path, Forms]:
    teacher = dino_files.resnet50_teacher()
    checkpoint = dino_files.full_checkpoint(teacher, "resnet50", ("backbone.bn1.weight",), teacher_prefix="module.")
    published = _torch(checkpoint, tmp / "dino_resnet50_pretrain_full_checkpoint.pth")
    return published, {
        "plain": _torch(checkpoint["teacher"], tmp / "teacher.pth"),
        "safetensors": _safetensors(checkpoint["teacher"], tmp / "teacher.safetensors"),
    }


def dino_vits16(tmp: Path) -> tuple[Path, Forms]:
    teacher = dino_files.vit_teacher(384)
    checkpoint = dino_files.full_checkpoint(teacher, "vit_small", ("backbone.norm.weight",))
    published = _torch(checkpoint, tmp / "dino_deitsmall16_pretrain_full_checkpoint.pth")
    return published, {
        "plain": _torch(teacher, tmp / "teacher.pth"),
        "safetensors": _safetensors(teacher, tmp / "teacher.safetensors"),
    }


def _vissl_flat(model: dict) -> dict:
    """VISSL's model ``state_dict()``: trunk and heads as module prefixes."""
    return {**{f"trunk.{k}": v for k, v in model["trunk"].items()}, **{f"heads.{k}": v for k, v in model["heads"].items()}}


def simclr(tmp: Path) -> tuple[Path, Forms]:
    checkpoint = simclr_files.published_checkpoint()
    model = checkpoint["classy_state_dict"]["base_model"]["model"]
    published = simclr_files.save_legacy(checkpoint, tmp / "model_final_checkpoint_phase999.torch")
    return published, {
        "nested": _torch(model, tmp / "model.pth"),
        "plain": _torch(_vissl_flat(model), tmp / "flat.pth"),
        "safetensors": _safetensors(_vissl_flat(model), tmp / "flat.safetensors"),
    }


def _barlow_model() -> dict:
    trunk = OrderedDict(resnet50_state())
    projector = barlow_files.make_projector()
    return {
        "trunk": OrderedDict(("_feature_blocks." + k, v) for k, v in trunk.items()),
        "heads": OrderedDict((barlow_files.vissl_head_name(k), v) for k, v in projector.items()),
    }


def barlow(tmp: Path) -> tuple[Path, Forms]:
    model = _barlow_model()
    published = barlow_files.save_vissl(model["trunk"], model["heads"], tmp / "barlow_twins_resnet50.torch")
    return published, {"safetensors": _safetensors(_vissl_flat(model), tmp / "flat.safetensors")}


def barlow_repo(tmp: Path) -> tuple[Path, Forms]:
    trunk, projector = OrderedDict(resnet50_state()), barlow_files.make_projector()
    model = OrderedDict(("module.backbone." + k, v) for k, v in trunk.items())
    model.update(("module.projector." + k, v) for k, v in projector.items())
    model["module.bn.running_mean"] = torch.zeros(8192)
    published = _torch(barlow_files.repo_checkpoint(model), tmp / "checkpoint.pth")
    unprefixed = {k[len("module."):]: v for k, v in model.items()}
    return published, {
        "plain": _torch(model, tmp / "model.pth"),
        "safetensors": _safetensors(unprefixed, tmp / "model.safetensors"),
    }


def vicreg(tmp: Path) -> tuple[Path, Forms]:
    model = vicreg_files.published_model()
    published = vicreg_files.save_published(model, tmp / "resnet50_fullckpt.pth")
    unprefixed = {k[len("module."):]: v for k, v in model.items()}  # (barlow@repo loads the prefixed one)
    return published, {"safetensors": _safetensors(unprefixed, tmp / "model.safetensors")}


def swav(tmp: Path) -> tuple[Path, Forms]:
    state = swav_files.published_state()
    published = _torch(state, tmp / "swav_800ep_pretrain.pth.tar")  # already a flat state dict, module.-prefixed
    unprefixed = {k[len("module."):]: v for k, v in state.items()}
    return published, {
        "plain": _torch(unprefixed, tmp / "unprefixed.pth"),
        "safetensors": _safetensors(state, tmp / "published.safetensors"),
    }


def byol(tmp: Path) -> tuple[Path, Forms]:
    params, state = byol_files.haiku_trees()
    published = tmp / "pretrain_res50x1.pkl"
    byol_files.dump_dill_like(byol_files.deepmind_checkpoint(params, state), published, protocol=4)
    experiment = tmp / "online.pkl"  # the experiment state's online trees alone, unwrapped
    byol_files.dump_dill_like({"online_params": params, "online_state": state}, experiment, protocol=4)
    flat = {
        f"{tree}/{module}/{entry}": torch.from_numpy(np.array(value))
        for tree, modules in (("online_params", params), ("online_state", state))
        for module, entries in modules.items()
        for entry, value in entries.items()
    }
    return published, {
        "plain": experiment,
        "flat-haiku.pth": _torch(flat, tmp / "flat.pth"),
        "safetensors": _safetensors(flat, tmp / "flat.safetensors"),
    }


def byol_mmselfsup(tmp: Path) -> tuple[Path, Forms]:
    state_dict = byol_files.mmselfsup_state_dict()
    published = tmp / byol_files.MMSELFSUP_FILE
    byol_files.save_mmengine(byol_files.mmengine_checkpoint(state_dict), published)
    return published, {
        "plain": _torch(OrderedDict(state_dict), tmp / "state_dict.pth"),
        "safetensors": _safetensors(state_dict, tmp / "state_dict.safetensors"),
    }


def timm_resnet18(tmp: Path) -> tuple[Path, Forms]:
    import timm

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    published = _safetensors(state, tmp / "model.safetensors")  # the Hugging Face hub's file
    return published, {"plain": _torch(state, tmp / "pytorch_model.bin")}


CASES: dict[str, tuple[str, Callable[[Path], tuple[Path, Forms]], int]] = {
    "supervised": ("supervised", supervised, 64),
    "dino": ("dino", dino, 64),
    "dino-vits16": ("dino-vits16", dino_vits16, 224),
    "simclr": ("simclr", simclr, 64),
    "barlow": ("barlow", barlow, 64),
    "barlow@repo": ("barlow@repo", barlow_repo, 64),
    "vicreg": ("vicreg", vicreg, 64),
    "swav": ("swav", swav, 64),
    "byol": ("byol", byol, 64),
    "byol@mmselfsup": ("byol@mmselfsup", byol_mmselfsup, 64),
    "timm:resnet18": ("timm:resnet18", timm_resnet18, 64),
}


def _outputs(encoder, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {layer: encoder(x, layer) for layer in encoder.layers}


# the files of these take a second or more to write and read: the fast subset keeps
# the two small ones
SLOW_CASES = set(CASES) - {"supervised", "timm:resnet18"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES])
def test_plain_and_safetensors_forms_give_the_published_representation(case, tmp_path):
    name, build, size = CASES[case]
    published, forms = build(tmp_path)
    reference = create_encoder(name, weights_path=published)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    expected = _outputs(reference, x)
    forms["own"] = _safetensors(reference.network.state_dict(), tmp_path / "own.safetensors")
    del reference
    assert any(is_safetensors(p) for p in (published, *forms.values()))
    for form, path in forms.items():
        encoder = create_encoder(name, weights_path=path)
        got = _outputs(encoder, x)
        del encoder
        for layer, value in expected.items():
            assert torch.equal(got[layer], value), f"{case}: {form} at {layer}"


def test_a_damaged_plain_form_is_refused_naming_the_key_as_the_file_spells_it(tmp_path):
    from rcdm_cli.errors import RcdmError

    state = {k[len("module."):]: v for k, v in swav_files.published_state().items()}
    state["prototypes.weights"] = state.pop("prototypes.weight")
    with pytest.raises(RcdmError) as info:
        create_encoder("swav", weights_path=_safetensors(state, tmp_path / "swav.safetensors"))
    message = str(info.value)
    assert "missing keys (prototypes.weight)" in message and "unexpected keys (prototypes.weights)" in message

    params, haiku_state = byol_files.haiku_trees()
    flat = {f"online_params/{m}/{e}": torch.from_numpy(np.array(v)) for m, es in params.items() for e, v in es.items()}
    flat["online_state/projector/batch_norm/~/mean_ema/average"] = torch.zeros(4096)  # the other statistics are missing
    with pytest.raises(RcdmError) as info:
        create_encoder("byol", weights_path=_safetensors(flat, tmp_path / "byol.safetensors"))
    assert "online_state['res_net50/~/initial_batchnorm/~/mean_ema']['average']" in str(info.value)
    flat["stray"] = torch.zeros(1)
    with pytest.raises(RcdmError, match="'stray' is not a flattened Haiku entry"):
        create_encoder("byol", weights_path=_safetensors(flat, tmp_path / "byol2.safetensors"))


def test_a_torch_file_in_mmselfsup_layout_given_for_deepmind_says_which_source(tmp_path):
    from rcdm_cli.errors import RcdmError

    state = {f"backbone.{k}": v for k, v in resnet50_state().items()}
    with pytest.raises(RcdmError, match="mmselfsup .* use byol@mmselfsup"):
        create_encoder("byol", weights_path=_safetensors(state, tmp_path / "mm.safetensors"))
