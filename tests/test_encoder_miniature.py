"""The miniature encoders trained by rcdm on its own scenes, through the real entry
points, with the weights that ship in the package."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import ImageOps
from safetensors.torch import save_file

from rcdm_cli.scenes import SHAPES, make_scenes
from rcdm_cli.encoders import create_encoder, get_registry
from rcdm_cli.errors import RcdmError
from rcdm_cli.evaluation.probe import accuracy, fit_probe
from rcdm_plugins import miniature

NAMES = {"scenes-simclr": {"backbone": 128, "head": 32}, "scenes-supervised": {"backbone": 128, "logits": 3}}


@pytest.fixture(scope="module")
def scenes():
    """Scenes no encoder was trained or probed on (the training script uses seeds
    1000 to 3000)."""
    return make_scenes(220, seed=4242)


@pytest.fixture(scope="module")
def encoders():
    return {name: create_encoder(name) for name in NAMES}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_they_come_through_their_entry_point_with_their_layers(name):
    entry, _ = get_registry().get(name)
    spec = entry.spec
    assert entry.plugin.startswith("rcdm ")
    assert {k: v[0] for k, v in spec.layers.items()} == NAMES[name]
    assert spec.default_layer == "backbone" and spec.preprocessing.size == 32
    (source,) = spec.weights
    assert source.url is None and source.license.startswith("MIT") and source.sha256 == miniature.SHA256[name]
    assert "SHA-256" in source.integrity


@pytest.mark.parametrize("name", sorted(NAMES))
def test_the_shipped_files_are_the_released_ones(name):
    path = miniature.shipped_path(name)
    assert path.is_file() and path.stat().st_size < 5_000_000
    assert miniature.file_sha256(path) == miniature.SHA256[name]
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == miniature.SHA256[name]
    assert all(v.dtype == torch.float32 for v in miniature.load_torch_file(path).values())


def test_outputs_are_deterministic_and_finite(encoders, scenes):
    images = [im for im, _ in scenes[:8]]
    for name, encoder in encoders.items():
        for layer, dim in NAMES[name].items():
            a, b = encoder.encode(images, layer), encoder.encode(images, layer)
            assert a.shape == (8, dim) and torch.isfinite(a).all() and torch.equal(a, b)
    again = create_encoder("scenes-simclr").encode(images, "head")
    assert torch.equal(again, encoders["scenes-simclr"].encode(images, "head"))


def test_local_weights_load_strictly(encoders, scenes, tmp_path):
    images = [im for im, _ in scenes[:8]]
    copy = tmp_path / "copy.safetensors"
    save_file({k: v.contiguous() for k, v in encoders["scenes-simclr"].network.state_dict().items()}, str(copy))
    local = create_encoder("scenes-simclr", weights_path=copy)
    assert local.weights_file == str(copy)
    for layer in ("backbone", "head"):
        assert torch.equal(local.encode(images, layer), encoders["scenes-simclr"].encode(images, layer))
    wrong = tmp_path / "supervised.safetensors"
    save_file(dict(encoders["scenes-supervised"].network.state_dict()), str(wrong))
    with pytest.raises(RcdmError, match=r"supervised\.safetensors does not match the expected layout: .*head"):
        create_encoder("scenes-simclr", weights_path=wrong)


def test_a_damaged_shipped_file_is_refused_with_the_way_out(monkeypatch, tmp_path):
    damaged = tmp_path / "scenes-simclr.safetensors"
    data = bytearray(miniature.shipped_path("scenes-simclr").read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(miniature, "shipped_path", lambda name: damaged)
    with pytest.raises(RcdmError, match=r"scenes-simclr\.safetensors is damaged or altered.*reinstall"):
        create_encoder("scenes-simclr")
    monkeypatch.setattr(miniature, "shipped_path", lambda name: tmp_path / "absent.safetensors")
    with pytest.raises(RcdmError, match="missing from the package.*reinstall"):
        create_encoder("scenes-supervised")


def _shape_probe_accuracy(encoder, scenes, n_train=120) -> float:
    feats = encoder.encode([im for im, _ in scenes], "backbone")
    labels = torch.tensor([SHAPES.index(f["shape"]) for _, f in scenes])
    probe = fit_probe(feats[:n_train], labels[:n_train], list(SHAPES), max_iter=100)
    return accuracy(probe, feats[n_train:], labels[n_train:])["top1"]


def test_shape_is_linearly_decodable_from_both_backbones(encoders, scenes):
    labels = np.array([SHAPES.index(f["shape"]) for _, f in scenes[120:]])
    chance = np.bincount(labels).max() / len(labels)
    assert _shape_probe_accuracy(encoders["scenes-supervised"], scenes) >= 0.95
    assert _shape_probe_accuracy(encoders["scenes-simclr"], scenes) >= max(0.8, chance + 0.4)


def test_the_simclr_head_is_more_invariant_to_grayscale_than_its_backbone(encoders, scenes):
    encoder = encoders["scenes-simclr"]
    colour = [im for im, f in scenes[:100] if not f["gray"]]
    gray = [ImageOps.grayscale(im).convert("RGB") for im in colour]
    sims = {
        layer: F.cosine_similarity(encoder.encode(colour, layer), encoder.encode(gray, layer)).mean().item()
        for layer in ("backbone", "head")
    }
    assert sims["head"] > sims["backbone"], sims
