"""What every built-in encoder must declare, checked over all of them as they come
through the real entry points (families such as ``timm`` describe their members
elsewhere), the native/rcdm preprocessing switch every encoder shares, and the checks
several families share: what each spec declares, and that a weights file in the
family's layout that would run code is refused."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rcdm_cli.encoders import create_encoder, get_registry, reset_registry
from rcdm_cli.errors import RcdmError
from rcdm_cli.plugin import IMAGENET_MEAN, IMAGENET_STD
from rcdm_cli.preprocessing import diffusion_target
from synthetic import barlow_vissl_checkpoint, simclr_vissl_checkpoint, vissl_lars_importable


@pytest.fixture(scope="module")
def registry():
    reset_registry()
    yield get_registry()
    reset_registry()


@pytest.fixture(scope="module")
def specs(registry):
    return [entry.spec for entry in registry.specs.values() if not entry.spec.family]


def test_every_built_in_plugin_imports(registry):
    assert registry.failed == {}
    assert {"supervised", "random"} <= set(registry.specs)


def test_every_layer_has_an_int_dim_and_a_description(specs):
    for spec in specs:
        assert "backbone" in spec.layers, spec.name
        assert spec.default_layer in spec.layers, spec.name
        for layer, (dim, description) in spec.layers.items():
            assert type(dim) is int and dim > 0, f"{spec.name}/{layer}"
            assert isinstance(description, str) and description.strip(), f"{spec.name}/{layer}"


def test_every_weight_source_has_an_address_a_licence_and_a_file_name(specs):
    for spec in specs:
        names = [source.name for source in spec.weights]
        assert len(names) == len(set(names)), spec.name
        for source in spec.weights:
            where = f"{spec.name}@{source.name}"
            if source.url is None:
                # shipped inside the package: the file is there and its digest is stated
                assert source.sha256 and "SHA-256" in source.integrity, where
                assert _shipped_file(spec, source).is_file(), where
            else:
                assert source.url.startswith("https://"), where
            assert source.license.strip(), where
            assert source.file_name, where
            assert source.description.strip() and "\n" not in source.description, where
            # the check a download gets is stated: a published digest, or completeness only
            hashed = source.sha256 or source.sha256_prefix
            assert ("SHA-256" in source.integrity) if hashed else ("Content-Length" in source.integrity), where


def _shipped_file(spec, source) -> Path:
    module = sys.modules[spec.build.__module__]
    return Path(module.__file__).parent / "weights" / source.file_name


def test_one_cached_file_name_is_one_address(specs):
    """Downloads share one cache folder keyed by file name: two addresses ending in
    the same name would overwrite each other."""
    urls: dict[str, str] = {}
    for spec in specs:
        for source in spec.weights:
            if source.url is None:
                continue
            seen = urls.setdefault(source.file_name, source.url)
            assert seen == source.url, f"{source.file_name}: {seen} and {source.url}"


def _image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_native_preprocessing_resizes_to_256_and_crops_224(registry):
    encoder = registry.create("random", preprocessing="native")
    assert torch.equal(encoder.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.equal(encoder.std.flatten(), torch.tensor(IMAGENET_STD))
    image = _image(300, 200)
    x = encoder.prepare(image)
    assert x.shape == (1, 3, 224, 224) and 0 <= x.min() and x.max() <= 1
    # 300x200 -> 384x256 (bilinear), then the central 224x224
    expected = image.resize((384, 256), resample=Image.BILINEAR).crop((80, 16, 304, 240))
    assert torch.equal(x[0], _pixels(expected))


def test_rcdm_preprocessing_is_guided_diffusion_crop_and_minus_one_to_one(registry):
    encoder = registry.create("random", preprocessing="rcdm")
    assert torch.equal(encoder.mean.flatten(), torch.full((3,), 0.5))
    assert torch.equal(encoder.std.flatten(), torch.full((3,), 0.5))
    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 3, 1, 1)
    assert torch.equal((x - encoder.mean) / encoder.std, torch.tensor([-1.0, -0.5, 1.0]).view(1, 3, 1, 1))

    image = _image(300, 200)
    # short side 200 -> 224: 336x224 (bicubic), then the central 224 columns
    expected = image.resize((336, 224), resample=Image.BICUBIC).crop((56, 0, 280, 224))
    assert torch.equal(encoder.prepare(image)[0], _pixels(expected))
    large = _image(640, 480)  # halved first, as guided-diffusion does for large images
    assert torch.allclose(encoder.prepare(large)[0] * 2 - 1, diffusion_target(large, 224), atol=1e-6)

    batch = torch.rand(1, 3, 64, 64)  # any size goes through; small keeps it fast
    with torch.no_grad():
        direct = encoder.network(batch * 2 - 1, "backbone").flatten(1)
        assert torch.allclose(encoder(batch), direct, rtol=1e-5, atol=1e-6)


# --- what each family's spec declares ---------------------------------------------------------


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    licence: tuple[str, ...]  # words the licence names


@dataclass(frozen=True)
class Declared:
    layers: dict[str, int]
    sources: tuple[Source, ...]
    preprocessing: tuple[str, int, int, str]  # resize, resize_to, size, interpolation
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] = (IMAGENET_MEAN, IMAGENET_STD)


FAIR = "https://dl.fbaipublicfiles.com"
DINO = FAIR + "/dino/{0}/{0}_full_checkpoint.pth"
MMSELFSUP = "byol_resnet50_16xb256-coslr-200e_in1k"
BILINEAR = ("short-side", 256, 224, "bilinear")
BICUBIC = ("short-side", 256, 224, "bicubic")
DINO_NORMALISATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # as DINO's own code spells it
DECLARED = {
    "simclr": Declared(
        {"backbone": 2048, "layer3": 1024, "head": 128},
        (Source("vissl", FAIR + "/vissl/model_zoo/simclr_rn50_1000ep_simclr_8node_resnet_16_07_20.afe428c7/model_final_checkpoint_phase999.torch", ("MIT", "VISSL")),),
        BILINEAR,
    ),
    "vicreg": Declared(
        {"backbone": 2048, "layer3": 1024, "head": 8192},
        (Source("fullckpt", FAIR + "/vicreg/resnet50_fullckpt.pth", ("MIT",)),),
        BILINEAR,
    ),
    "swav": Declared(
        {"backbone": 2048, "layer3": 1024, "head": 128, "prototypes": 3000},
        (Source("800ep", FAIR + "/deepcluster/swav_800ep_pretrain.pth.tar", ("CC-BY-NC",)),),
        BILINEAR,
        ((0.485, 0.456, 0.406), (0.228, 0.224, 0.225)),  # SwAV's own
    ),
    "barlow": Declared(
        {"backbone": 2048, "layer3": 1024, "head": 8192},
        (
            Source("vissl", FAIR + "/vissl/model_zoo/barlow_twins/barlow_twins_32gpus_4node_imagenet1k_1000ep_resnet50.torch", ("MIT", "VISSL")),
            Source("repo", FAIR + "/barlowtwins/ljng/checkpoint.pth", ("MIT",)),
        ),
        BILINEAR,
    ),
    "byol": Declared(
        {"backbone": 2048, "layer3": 1024, "head": 256},
        (
            Source("deepmind", "https://storage.googleapis.com/deepmind-byol/checkpoints/pretrain_res50x1.pkl", ("Apache-2.0",)),
            Source("mmselfsup", f"https://download.openmmlab.com/mmselfsup/1.x/byol/{MMSELFSUP}/{MMSELFSUP}_20220825-de817331.pth", ("Apache-2.0",)),
        ),
        BICUBIC,  # the DeepMind file's; the mmselfsup source has its own (test_encoder_byol)
    ),
    "dino": Declared(
        {"backbone": 2048, "layer3": 1024, "head": 256}, (Source("resnet50", DINO.format("dino_resnet50_pretrain"), ("Apache-2.0",)),), BICUBIC, DINO_NORMALISATION
    ),
    "dino-vits16": Declared(
        {"backbone": 384, "head": 256}, (Source("vits16", DINO.format("dino_deitsmall16_pretrain"), ("Apache-2.0",)),), BICUBIC, DINO_NORMALISATION
    ),
    "dino-vitb16": Declared(
        {"backbone": 768, "head": 256}, (Source("vitb16", DINO.format("dino_vitbase16_pretrain"), ("Apache-2.0",)),), BICUBIC, DINO_NORMALISATION
    ),
}


@pytest.mark.parametrize("name", list(DECLARED))
def test_spec_declares_layers_weights_and_preprocessing(registry, name):
    declared = DECLARED[name]
    spec = registry.specs[name].spec
    assert {k: d for k, (d, _) in spec.layers.items()} == declared.layers
    assert spec.default_layer == "backbone"
    assert [(s.name, s.url) for s in spec.weights] == [(s.name, s.url) for s in declared.sources]
    for source, expected in zip(spec.weights, declared.sources):
        for word in expected.licence:
            assert word in source.license, f"{name}@{source.name}: {source.license}"
    pre = spec.preprocessing
    assert (pre.resize, pre.resize_to, pre.size, pre.interpolation) == declared.preprocessing
    assert (pre.mean, pre.std) == declared.normalisation


# --- a weights file that would run code -------------------------------------------------------


def _touch(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


# Three ways a pickle can run code when loaded
RUNS = {
    "exec": lambda marker: (exec, (f"open({str(marker)!r}, 'w').close()",)),
    "os.system": lambda marker: (os.system, (_touch(marker),)),
    "subprocess.call": lambda marker: (subprocess.call, (["sh", "-c", _touch(marker)],)),
}


class _RunsCode:
    def __init__(self, how: str, marker: Path):
        self.how, self.marker = how, marker

    def __reduce__(self):
        return RUNS[self.how](self.marker)


def _simclr_file(payload, path: Path) -> None:
    """VISSL's training state (the legacy torch format of the 2020 file), the payload
    among its meters."""
    checkpoint = simclr_vissl_checkpoint(OrderedDict(), OrderedDict())
    checkpoint["classy_state_dict"]["meters"] = [payload]
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)


def _barlow_file(payload, path: Path) -> None:
    """VISSL's training state with the LARS filter the loader lets through, the
    payload among its meters."""
    with vissl_lars_importable() as lars:
        checkpoint = barlow_vissl_checkpoint(OrderedDict(), OrderedDict(), lars._exclude_bias_and_norm)
        checkpoint["classy_state_dict"]["meters"] = [payload]
        torch.save(checkpoint, path)


def _swav_file(payload, path: Path) -> None:
    """A state dict, the payload as one of its values."""
    torch.save(OrderedDict({"module.conv1.weight": torch.zeros(64, 3, 7, 7), "payload": payload}), path)


def _vicreg_file(payload, path: Path) -> None:
    """The full checkpoint, the payload where the training script's filter is."""
    torch.save({"epoch": 1, "model": OrderedDict(), "optimizer": {"state": {}, "param_groups": [{"weight_decay_filter": payload}]}}, path)


LAYOUTS = {
    "barlow": ("evil.torch", _barlow_file),
    "simclr": ("evil.torch", _simclr_file),
    "swav": ("evil.pth.tar", _swav_file),
    "vicreg": ("evil.pth", _vicreg_file),
}


@pytest.mark.parametrize("how", list(RUNS))
@pytest.mark.parametrize("family", list(LAYOUTS))
def test_a_file_that_would_run_code_is_refused(tmp_path, family, how):
    marker = tmp_path / "ran"
    file_name, write = LAYOUTS[family]
    path = tmp_path / file_name
    write(_RunsCode(how, marker), path)
    with pytest.raises(RcdmError, match="refused"):
        create_encoder(family, weights_path=path)
    assert not marker.exists()
