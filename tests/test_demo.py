"""rcdm demo, shrunk: scenes, a few training steps, samples, interpolation, rank, report."""

import json
from pathlib import Path

import pytest
import torch

from rcdm_cli.cli.app import run
from rcdm_cli.demo.run import DemoSettings, run_demo
from rcdm_cli.demo.scenes import SHAPES, make_scenes
from rcdm_cli.errors import UsageError


def test_scenes_are_reproducible_and_record_their_factors():
    a, b = make_scenes(4, seed=3), make_scenes(4, seed=3)
    assert [f for _, f in a] == [f for _, f in b]
    assert all((x.tobytes() == y.tobytes()) for (x, _), (y, _) in zip(a, b))
    image, factors = a[0]
    assert image.size == (64, 64) and factors["shape"] in SHAPES and 0.3 <= factors["size"] <= 0.6


def test_shrunk_demo_writes_its_report(tmp_path):
    settings = DemoSettings(out=tmp_path / "demo", train_images=8, heldout_images=3, steps=4, batch_size=4, samples=2, sampling_steps="3")
    result = run_demo(settings, torch.device("cpu"))
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "data:image/png;base64," in report and "MRR" in report
    assert result["rank"]["images"] == 3 and result["rank"]["samples_per_image"] == 2
    scenes = json.loads((tmp_path / "demo" / "data" / "scenes.json").read_text())
    assert len(scenes["train"]) == 8 and len(scenes["heldout"]) == 3
    with pytest.raises(UsageError, match="already holds a demo"):
        run_demo(settings, torch.device("cpu"))


def test_demo_command_refuses_bad_steps(capsys, tmp_path):
    assert run(["demo", "--out", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "--steps must be positive" in capsys.readouterr().err


def test_an_unfinished_demo_is_replaced_and_only_its_own_files(tmp_path):
    """A demo stopped by a failed download or Ctrl-C leaves generated files only; the
    next run replaces them rather than asking for --overwrite, and leaves the user's
    other files in the folder alone."""
    out = tmp_path / "demo"
    (out / "data" / "train").mkdir(parents=True)
    (out / "data" / "train" / "scene-0000.png").write_bytes(b"half")
    (out / "notes.txt").write_text("mine")
    settings = DemoSettings(out=out, train_images=8, heldout_images=3, steps=2, batch_size=4, samples=2, sampling_steps="3")
    # without the marker a demo writes first, a data folder is the user's
    with pytest.raises(UsageError, match="not written by a demo"):
        run_demo(settings, torch.device("cpu"))
    assert run(["demo", "--out", str(out), "--overwrite", "--steps", "1"]) == 2
    assert (out / "data" / "train" / "scene-0000.png").read_bytes() == b"half"
    (out / ".rcdm-demo").write_text("{}")
    events = []
    result = run_demo(settings, torch.device("cpu"), event=events.append)
    assert any("unfinished demo" in e for e in events)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "demo.json").is_file() and Path(result["report"]).is_file()
    assert len(list((out / "data" / "train").glob("*.png"))) == 8


def test_a_given_checkpoint_replaces_training(tmp_path):
    """The path `--released` takes (there with released:dino-head, downloaded): no
    training, the encoder from the checkpoint's metadata, the same report."""
    from conftest import make_tiny_state
    from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
    from rcdm_cli.checkpoint.store import save_checkpoint
    from rcdm_cli.diffusion import PRESETS
    from rcdm_cli.preprocessing import RCDM

    info = EncoderInfo(name="thumbnail", layer="backbone", rep_dim=48, preprocessing=RCDM.to_dict())
    meta = CheckpointMeta(unet=PRESETS["tiny"].unet.with_rep_dim(48), diffusion=PRESETS["tiny"].diffusion, encoder=info)
    ckpt = tmp_path / "given.safetensors"
    save_checkpoint(ckpt, {"model": make_tiny_state(48)}, meta)
    settings = DemoSettings(
        out=tmp_path / "demo", train_images=4, heldout_images=3, samples=2, sampling_steps="3", checkpoint=str(ckpt)
    )
    result = run_demo(settings, torch.device("cpu"))
    assert result["checkpoint"] == str(ckpt) and result["train_seconds"] == 0.0
    assert not (tmp_path / "demo" / "run").exists()
    assert result["rank"]["images"] == 3
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "released" in report and "4x4 grid" in report
