"""rcdm demo, shrunk: scenes, a few training steps per representation, samples,
attributes, findings, report; refusals and interruptions."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from rcdm_cli.cli.app import run
from rcdm_cli.demo import run as demo_run
from rcdm_cli.demo.findings import FINDINGS, assess, verdict
from rcdm_cli.demo.run import DemoSettings, run_demo
from rcdm_cli.scenes import SHAPES, make_scenes
from rcdm_cli.errors import Interrupted, UsageError

TINY = dict(train_images=24, heldout_images=4, steps=3, batch_size=4, samples=2, sampling_steps="2", grid_rows=2,
            interpolation_frames=3)


def test_scenes_are_reproducible_and_record_their_factors():
    a, b = make_scenes(40, seed=3), make_scenes(40, seed=3)
    assert [f for _, f in a] == [f for _, f in b]
    assert all((x.tobytes() == y.tobytes()) for (x, _), (y, _) in zip(a, b))
    image, factors = a[0]
    assert image.size == (64, 64) and factors["shape"] in SHAPES and 0.3 <= factors["size"] <= 0.6
    gray = [im for im, f in a if f["gray"]]
    assert 0 < len(gray) < 20  # a few, as ImageNet has a few grayscale photographs
    import numpy as np

    for im in gray:
        arr = np.asarray(im).astype(int)
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


@pytest.mark.slow
def test_shrunk_demo_writes_a_report_that_matches_what_ran(tmp_path):
    out = tmp_path / "demo"
    progress = []
    result = run_demo(DemoSettings(out=out, **TINY), torch.device("cpu"), progress=lambda *p: progress.append(p))
    summary = json.loads((out / "demo.json").read_text())
    # every sampling call of each model has a bar that reaches its end: the scenes' samples, then each augmentation's
    ends = [task for task, done, total in progress if "sampling" in task and done == total]
    assert ends == [f"scenes-simclr/{role}: sampling 8 images" for role in ("backbone", "head") for _ in range(3)]
    assert summary["findings"] == json.loads(json.dumps(result["findings"]))
    roles = [r["role"] for r in result["representations"]]
    assert roles == ["backbone", "head"]
    for record in result["representations"]:
        assert record["steps"] == 3 and record["images"] == 4 and record["samples_per_image"] == 2
        assert record["label"] == f"scenes-simclr/{record['role']}" and record["layer"] == record["role"]
        assert {"scene-shape", "scene-gray", "colourfulness", "fg-scale"} <= set(record["attributes"])
        assert set(record["augmentations"]) == {"grayscale", "crop-0.5"}
        assert record["rank"]["images"] == 4 and 0 < record["rank"]["mrr"] <= 1
    verdicts = {f["verdict"].split(" ")[0] for f in result["findings"]}
    assert verdicts <= {"agrees", "disagrees", "not"} and len(result["findings"]) >= 4
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 4  # samples, the grayscale views, the chart, interpolation
    assert "The backbone keeps grayscale status" in report and "3 training steps" in report
    assert "Samples conditioned on the head vary more" in report
    assert "scenes-simclr/head" in report and "chance" in report
    for name in ("samples.png", "augmented.png", "interpolation.png", "attributes.png"):
        assert (out / name).is_file()
    with pytest.raises(UsageError, match="already holds a demo"):
        run_demo(DemoSettings(out=out, **TINY), torch.device("cpu"))


def test_demo_command_refuses_bad_numbers(capsys, tmp_path):
    assert run(["demo", "--out", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "--steps must be positive" in capsys.readouterr().err
    assert run(["demo", "--out", str(tmp_path / "d"), "--seed", "-1"]) == 2
    assert "--seed must be a non-negative integer" in capsys.readouterr().err


@pytest.mark.slow
def test_an_unfinished_demo_is_replaced_and_only_its_own_files(tmp_path):
    """A demo stopped by a failed download or Ctrl-C leaves generated files only; the
    next run replaces them rather than asking for --overwrite, and leaves the user's
    other files in the folder alone."""
    out = tmp_path / "demo"
    (out / "data" / "train").mkdir(parents=True)
    (out / "data" / "train" / "scene-0000.png").write_bytes(b"half")
    (out / "notes.txt").write_text("mine")
    settings = DemoSettings(out=out, **TINY)
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
    assert len(list((out / "data" / "train").glob("*.png"))) == TINY["train_images"]


def test_a_signal_during_training_stops_the_demo_without_a_report(tmp_path, monkeypatch):
    """SIGTERM while a model trains: the trainer saves and stops, and the demo stops
    too rather than reporting on a model that did not finish its steps."""
    from rcdm_cli.training.loop import Trainer

    real_step = Trainer._train_step
    calls = []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", step)
    out = tmp_path / "demo"
    progress = []
    with pytest.raises(Interrupted, match="scenes-simclr/backbone.*no report"):
        run_demo(DemoSettings(out=out, **{**TINY, "steps": 5}), torch.device("cpu"), progress=lambda *p: progress.append(p))
    assert not (out / "report.html").exists() and not (out / "demo.json").exists()
    # the progress bars saw the feature cache, then the steps trained before the signal
    assert ("scenes-simclr/backbone: encoding images for the feature cache", 24, 24) in progress
    assert [p for p in progress if p[0].startswith("training")] == [("training scenes-simclr/backbone", k, 5) for k in (1, 2)]
    assert (out / ".rcdm-demo").exists()  # the next run replaces it


def test_sigterm_while_sampling_stops_the_command_with_one_line(tmp_path, monkeypatch, capsys):
    def measure(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal should have stopped the demo")

    monkeypatch.setattr(demo_run, "_measure", measure)
    monkeypatch.setattr(demo_run, "DemoSettings", lambda out, **kw: DemoSettings(out=out, **{**TINY, **kw}))
    out = tmp_path / "demo"
    code = run(["demo", "--out", str(out), "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 143 and "stopped by SIGTERM" in err[-1]
    assert not (out / "report.html").exists() and not (out / "demo.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


@pytest.mark.slow
def test_a_given_checkpoint_replaces_training(tmp_path):
    """The path `--released` takes (there with released:dino-head, downloaded): no
    training, the encoder from the checkpoint's metadata, the same measures."""
    from helpers import make_tiny_state
    from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
    from rcdm_cli.checkpoint.store import save_checkpoint
    from rcdm_cli.diffusion import PRESETS
    from rcdm_cli.preprocessing import RCDM

    info = EncoderInfo(name="thumbnail", layer="backbone", rep_dim=48, preprocessing=RCDM.to_dict())
    meta = CheckpointMeta(unet=PRESETS["tiny"].unet.with_rep_dim(48), diffusion=PRESETS["tiny"].diffusion, encoder=info)
    ckpt = tmp_path / "given.safetensors"
    save_checkpoint(ckpt, {"model": make_tiny_state(48)}, meta)
    settings = DemoSettings(out=tmp_path / "demo", **{**TINY, "augmentations": ()}, checkpoint=str(ckpt))
    result = run_demo(settings, torch.device("cpu"))
    (record,) = result["representations"]
    assert record["checkpoint"] == str(ckpt) and record["train_seconds"] == 0.0 and record["steps"] is None
    assert record["label"] == "thumbnail/backbone" and record["rank"]["images"] == 4
    assert not (tmp_path / "demo" / "runs").exists() and result["findings"] == []
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "thumbnail/backbone" in report and "training steps" not in report


def _record(spread: dict, carried: dict | None = None) -> dict:
    return {
        "attributes": {name: {"spread": v[0], "spread_ci": [v[1], v[2]]} for name, v in spread.items()},
        "augmentations": {
            aug: {"attributes": {attr: {"carried": v[0], "ci_low": v[1], "ci_high": v[2]} for attr, v in block.items()}}
            for aug, block in (carried or {}).items()
        },
    }


def test_verdicts_follow_the_numbers_and_their_intervals():
    assert verdict((0.1, 0.0, 0.2), (0.5, 0.4, 0.6)) == "agrees clearly"
    assert verdict((0.3, 0.1, 0.5), (0.4, 0.2, 0.6)) == "agrees (intervals overlap)"
    assert verdict((0.6, 0.5, 0.7), (0.2, 0.1, 0.3)) == "disagrees clearly"
    assert verdict((0.45, 0.3, 0.6), (0.4, 0.3, 0.5)) == "disagrees (intervals overlap)"
    assert verdict((None, None, None), (0.4, 0.3, 0.5)) == "not measured"
    backbone = _record(
        {"scene-background": (0.1, 0.05, 0.15), "scene-size": (0.2, 0.1, 0.3), "scene-x": (0.5, 0.4, 0.6)},
        {"grayscale": {"colourfulness": (0.9, 0.8, 1.0)}},
    )
    head = _record(
        {"scene-background": (0.6, 0.5, 0.7), "scene-size": (0.3, 0.2, 0.4), "scene-x": (0.45, 0.35, 0.55)},
        {"grayscale": {"colourfulness": (0.95, 0.85, 1.0)}},
    )
    rows = {(r["attribute"], r["quantity"]): r for r in assess({"backbone": backbone, "head": head})}
    assert rows[("scene-background", "spread")]["verdict"] == "agrees clearly"
    assert rows[("colourfulness", "carried")]["verdict"] == "disagrees (intervals overlap)"
    assert ("scene-size", "carried") not in rows  # crop-0.5 was not measured
    overall = rows[("scene-*", "spread")]
    assert overall["count"] == "2 of 3 (1 clearly; 0 clearly the other way)"
    assert overall["verdict"] == "agrees (mostly within noise)"
    assert all(f.low != f.high for f in FINDINGS)


def test_the_last_line_names_the_report_and_what_else_was_written(tmp_path):
    from rcdm_cli.cli.demo import _written

    (tmp_path / "runs").mkdir()
    result = {name: str(tmp_path / f"{name}.png") for name in ("samples", "interpolation", "attributes")}
    result.update(report=str(tmp_path / "report.html"), summary=str(tmp_path / "demo.json"))
    assert _written(tmp_path, result) == (
        f"report: {(tmp_path / 'report.html').resolve()}; also in {tmp_path.resolve()}: samples.png, interpolation.png, "
        "attributes.png, demo.json (the numbers), the scenes in data/, the models in runs/"
    )
