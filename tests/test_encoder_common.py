"""What every built-in encoder must declare, checked over all of them as they come
through the real entry points (families such as ``timm`` describe their members
elsewhere), and the native/rcdm preprocessing switch every encoder shares."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rcdm_cli.encoders import IMAGENET_MEAN, IMAGENET_STD, get_registry, reset_registry
from rcdm_cli.preprocessing import diffusion_target


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
