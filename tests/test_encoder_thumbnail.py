"""The thumbnail encoder: the image averaged onto a grid, through the real entry point."""

import numpy as np
import pytest
import torch
from PIL import Image

from rcdm_cli.encoders import create_encoder, get_registry
from rcdm_cli.errors import UsageError
from rcdm_cli.preprocessing import RCDM


def _scene() -> Image.Image:
    """Left half red, right half blue, 80x64 (the centre crop keeps 64x64)."""
    pixels = np.zeros((64, 80, 3), dtype=np.uint8)
    pixels[:, :40] = (255, 0, 0)
    pixels[:, 40:] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_it_comes_through_its_entry_point_with_its_layers():
    entry, _ = get_registry().get("thumbnail")
    assert entry.plugin.startswith("rcdm ") and {k: v[0] for k, v in entry.spec.layers.items()} == {
        "backbone": 48, "8x8": 192, "2x2": 12,
    }


def test_cells_are_the_mean_colour_of_each_grid_cell():
    encoder = create_encoder("thumbnail")
    rep = encoder.encode([_scene()], "2x2").view(3, 2, 2)  # channel, row, column, in [-1, 1]
    # the central 64x64 of the 80x64 image: columns 8..71, red up to column 39
    red_share = (40 - 8) / 32
    assert torch.allclose(rep[0, :, 0], torch.full((2,), 1.0), atol=1e-5)  # left cells: all red
    assert torch.allclose(rep[2, :, 1], torch.full((2,), 1.0), atol=1e-5)  # right cells: all blue
    assert torch.allclose(rep[0, :, 1], torch.full((2,), 2 * (red_share - 1) - 1), atol=1e-5)
    for layer, dim in (("backbone", 48), ("8x8", 192)):
        assert encoder.encode([_scene()], layer).shape == (1, dim)


def test_gradients_reach_the_input_and_no_weights_are_taken(tmp_path):
    encoder = create_encoder("thumbnail")
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    encoder(x, "backbone").square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="no weights"):
        create_encoder("thumbnail", weights_path=tmp_path / "w.pt")


def test_the_released_models_scaling_changes_the_input_size_not_the_values():
    native = create_encoder("thumbnail")
    rcdm = create_encoder("thumbnail", preprocessing=RCDM)
    assert native.prepare(_scene()).shape[-1] == 64 and rcdm.prepare(_scene()).shape[-1] == 224
    assert torch.allclose(native.encode([_scene()]), rcdm.encode([_scene()]), atol=2e-2)
