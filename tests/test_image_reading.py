"""Images are read as a person sees them, in every format a researcher's folder holds:
bit depths scaled (not clipped), EXIF orientation applied, transparency over white;
oversized images refused in one line."""

import numpy as np
import pytest
from PIL import Image

from rcdm_cli.cli.app import run
from rcdm_cli.errors import RcdmError
from rcdm_cli.inputs import as_seen, load_image
from rcdm_cli.training.data import Views, make_views


def _rgb(path) -> np.ndarray:
    return np.asarray(load_image(path)).astype(int)


def test_eight_bit_rgb_is_unchanged(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert np.array_equal(_rgb(tmp_path / "a.png"), pixels)


def test_a_sixteen_bit_gradient_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "g16.png")  # a 16-bit grayscale PNG
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    seen = _rgb(tmp_path / "g16.png")
    assert seen.shape == (8, 32, 3) and np.all(seen[..., 0] == seen[..., 2])
    assert np.abs(seen[0, :, 0] - np.round(ramp[0] / 257)).max() <= 1
    assert seen[0, 0, 0] == 0 and seen[0, 16, 0] in (131, 132) and seen[0, -1, 0] == 255


def test_grayscale_palette_and_cmyk(tmp_path):
    Image.fromarray(np.full((4, 4), 77, np.uint8), "L").save(tmp_path / "l.png")
    assert np.all(_rgb(tmp_path / "l.png") == 77)
    palette = Image.new("P", (4, 4))
    palette.putpalette([10, 200, 30] + [0] * 765)
    palette.save(tmp_path / "p.png")
    assert np.all(_rgb(tmp_path / "p.png") == [10, 200, 30])
    Image.new("CMYK", (4, 4), (255, 0, 0, 0)).save(tmp_path / "c.jpg")  # pure cyan ink
    cyan = _rgb(tmp_path / "c.jpg")[0, 0]
    assert cyan[0] < 40 and cyan[1] > 215 and cyan[2] > 215


def test_transparency_is_shown_over_white(tmp_path):
    rgba = np.zeros((4, 8, 4), np.uint8)
    rgba[:, :4] = [200, 0, 0, 255]  # opaque red on the left, transparent black on the right
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    seen = _rgb(tmp_path / "a.png")
    assert np.all(seen[:, :4] == [200, 0, 0]) and np.all(seen[:, 4:] == 255)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
    palette.save(tmp_path / "t.png", transparency=1)
    assert np.all(_rgb(tmp_path / "t.png") == 255)


def test_an_animation_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in [(250, 0, 0), (0, 0, 250)]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    first = _rgb(tmp_path / "a.gif")[0, 0]
    assert first[0] > 200 and first[2] < 50


def test_exif_orientation_stands_a_phone_photo_upright(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)  # stored landscape, marker in the top-left corner
    pixels[:5, :5] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    seen = _rgb(tmp_path / "phone.jpg")
    assert seen.shape == (40, 20, 3)  # portrait, as a viewer shows it
    assert seen[:5, -5:].mean() > 200 and seen[:5, :5].mean() < 50  # the corner went to the top right


def test_training_reads_images_the_same_way(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
    views = Views(target_size=32, encoder_size=32)
    target, _ = make_views(Image.fromarray(ramp), views, None, False)
    assert target.min() < -0.9 and target.max() > 0.9  # a ramp from black to white, not a white image


def test_as_seen_takes_float_images_in_either_range():
    unit = Image.fromarray(np.full((2, 2), 0.5, np.float32), "F")
    byte = Image.fromarray(np.full((2, 2), 128.0, np.float32), "F")
    assert np.asarray(as_seen(unit))[0, 0, 0] == 128 and np.asarray(as_seen(byte))[0, 0, 0] == 128


def test_an_oversized_image_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels is over twice the limit
    with pytest.raises(RcdmError, match="decompression bombs"):
        load_image(tmp_path / "big.png")
    code = run(["sample", str(tmp_path / "big.png"), "-c", "init:tiny", "--encoder", "random", "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "decompression bombs" in err[-1] and "internal error" not in err[-1]
