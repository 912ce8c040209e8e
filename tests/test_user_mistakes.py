"""User mistakes that once surfaced as internal errors: each is now one line naming
the mistake, with the usage exit code, found before any weights are loaded."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from rcdm_cli.cli.app import run
from rcdm_cli.errors import UsageError
from rcdm_cli.pipeline import expression as expr


def _error(capsys, *args) -> tuple[int, str]:
    code = run([str(a) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    return path


def test_deep_and_long_expressions_are_refused_with_the_limit(capsys, image, tmp_path):
    deep = "(" * 3000 + str(image) + ")" * 3000
    with pytest.raises(UsageError, match=f"nested more than {expr.MAX_DEPTH} deep"):
        expr.parse(deep)
    with pytest.raises(UsageError, match=f"at most {expr.MAX_TERMS} are allowed"):
        expr.parse(" + ".join([str(image)] * 5000))
    expr.parse(" + ".join([str(image)] * expr.MAX_TERMS))  # the limit itself is fine
    expr.parse("(" * expr.MAX_DEPTH + str(image) + ")" * expr.MAX_DEPTH)
    code, line = _error(capsys, "arith", deep, "-c", "released:dino-head", "-o", tmp_path / "o")
    assert code == 2 and "nested more than" in line and len(line) < 400  # shown around the mistake only


@pytest.mark.parametrize("value, message", [("nan", "finite"), ("inf", "finite"), ("-1", "positive"), ("0", "positive")])
def test_attack_budgets_are_checked_before_any_download(capsys, image, tmp_path, value, message, monkeypatch):
    monkeypatch.setenv("RCDM_OFFLINE", "1")  # a released model would need the network
    code, line = _error(capsys, "attack", image, "-c", "released:dino-head", "--objective", "representation", "--eps", value, "-o", tmp_path / "o")
    assert code == 2 and "eps must be" in line and message in line
    code, line = _error(capsys, "attack", image, "-c", "released:dino-head", "--objective", "representation", "--alpha", value, "-o", tmp_path / "o")
    assert code == 2 and "alpha must be" in line and message in line


def test_vectors_files_without_numbers_are_refused(capsys, tmp_path):
    save_file({"reps": torch.zeros(0, 2048)}, str(tmp_path / "empty.safetensors"))
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    save_file({"reps": torch.full((1, 2048), float("nan"))}, str(tmp_path / "nan.safetensors"))
    for name, message in [("empty.safetensors", "holds no values"), ("words.npy", "expected numbers"), ("nan.safetensors", "NaN")]:
        code, line = _error(capsys, "sample", "--rep", tmp_path / name, "-c", "init:tiny", "-o", tmp_path / "o")
        assert code == 2 and message in line and "internal error" not in line, line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where not even root can create files")
def test_an_unwritable_out_is_found_before_any_work(capsys, image, tmp_path):
    code, line = _error(capsys, "sample", "--rep", "random:1", "-c", "init:tiny", "-o", "/proc/rcdm-samples")
    assert code == 1 and line.startswith("rcdm: error: cannot write into /proc") and "--out" in line
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 100, 0, 0)).save(data / f"{i}.png")
    code, line = _error(capsys, "train", data, "--encoder", "random", "--preset", "tiny", "--out", "/proc/rcdm-run", "--steps", 1)
    assert code == 1 and line.startswith("rcdm: error: cannot write into /proc")


def test_absurd_counts_are_refused_before_any_work(capsys, image, tmp_path):
    code, line = _error(capsys, "sample", "--rep", "random:1", "-c", "init:tiny", "-n", 10**12, "-o", tmp_path / "s")
    assert code == 2 and "asks for 1,000,000,000,000 samples" in line and "available" in line
    assert not (tmp_path / "s").exists()
    code, line = _error(capsys, "interpolate", image, image, "-c", "init:tiny", "--encoder", "random", "--frames", 10**11,
                        "-o", tmp_path / "i")
    assert code == 2 and "--frames must be at most 10,000" in line
    code, line = _error(capsys, "interpolate", image, image, "-c", "init:tiny", "--encoder", "random", "--frames", 9000,
                        "-n", 10**6, "-o", tmp_path / "i")
    assert code == 2 and "--frames 9000 x -n 1000000 asks for" in line


def test_offline_names_every_missing_file_at_once(capsys, image, tmp_path, monkeypatch):
    monkeypatch.setenv("RCDM_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RCDM_OFFLINE", "1")
    code, line = _error(capsys, "sample", image, "-c", "released:dino-head", "-o", tmp_path / "o")
    assert code == 1 and "2 files are not in the cache and RCDM_OFFLINE is set" in line
    assert "rcdm_ema_dino_head.pt -> " in line and "dino_resnet50_pretrain_full_checkpoint.pth -> " in line
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (32, 32)).save(data / "a.png")
    code, line = _error(capsys, "train", data, "--encoder", "dino", "--preset", "rcdm-128", "--init", "released:dino-backbone",
                        "--steps", 1, "--out", tmp_path / "run")
    assert code == 1 and "2 files are not in the cache and RCDM_OFFLINE is set" in line
    assert "rcdm_ema_dino_trunk.pt -> " in line and "dino_resnet50_pretrain_full_checkpoint.pth -> " in line
    assert not (tmp_path / "run").exists()


def test_non_finite_numbers_are_refused_before_any_work(capsys, tmp_path):
    code, line = _error(capsys, "sample", "--rep", "random:1", "-c", "init:tiny", "--sampler", "ddim", "--eta", "inf",
                        "-o", tmp_path / "s")
    assert code == 2 and "--eta must be a finite number" in line
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (32, 32)).save(data / "a.png")
    for flag, value, message in [("--lr", "nan", "--lr must be a positive finite"), ("--lr", "inf", "--lr must be a positive finite"),
                                 ("--weight-decay", "nan", "--weight-decay must be a non-negative finite")]:
        code, line = _error(capsys, "train", data, "--encoder", "random", "--preset", "tiny", "--steps", 1,
                            "--out", tmp_path / "run", flag, value)
        assert code == 2 and message in line and "internal error" not in line, line
        assert not (tmp_path / "run").exists()


def test_fid_refuses_an_oversized_image_in_one_line(tmp_path, monkeypatch):
    from rcdm_cli.errors import RcdmError
    from rcdm_cli.evaluation import fid

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (64, 64)).save(folder / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(RcdmError, match="could not read .*big.png"):
        fid.image_sizes(folder)
