"""Training the `tiny` preset on generated images, on the CPU: learning, resuming,
signals, torchrun, bad data and faults."""

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from helpers import rcdm
from rcdm_cli.checkpoint.rundir import RunDir
from rcdm_cli.checkpoint.store import load_checkpoint, read_meta
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.training.config import TrainConfig
from rcdm_cli.training.data import StepBatches
from rcdm_cli.training.loop import Trainer

COMMON = ["--encoder", "random", "--preset", "tiny", "--workers", "0", "--lr", "1e-3", "--cache-features"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """Eight small images in two sub-folders: a disc on a plain background."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for i in range(8):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        im = Image.new("RGB", (48, 40), tuple(int(c) for c in rng.integers(0, 255, 3)))
        x, y = rng.integers(0, 28), rng.integers(0, 20)
        ImageDraw.Draw(im).ellipse([x, y, x + 18, y + 18], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        im.save(folder / f"{i}.png")
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def _truncated(source: Path, target: Path) -> None:
    """A PNG whose header reads fine and whose pixels are cut off."""
    good = source.read_bytes()
    target.write_bytes(good[: len(good) // 2])


@pytest.fixture(scope="module")
def mixed(shapes, tmp_path_factory) -> Path:
    """The eight shapes as 0.png..7.png and four truncated files t0..t3.png: in the
    first step of two processes of batch 2, rank 0's whole slice is truncated."""
    root = tmp_path_factory.mktemp("mixed")
    sources = sorted(shapes.rglob("*.png"))
    for i, p in enumerate(sources):
        (root / f"{i}.png").write_bytes(p.read_bytes())
    for i in range(4):
        _truncated(sources[i], root / f"t{i}.png")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One RCDM_HOME for the module, so the feature cache is computed once."""
    return tmp_path_factory.mktemp("home")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _shared_home(home, monkeypatch):
    monkeypatch.setenv("RCDM_HOME", str(home))


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(step_dir: Path, name: str = "model") -> dict[str, torch.Tensor]:
    return load_checkpoint(step_dir / "model.safetensors", weights=name)[1]


@pytest.mark.slow
def test_tiny_model_learns_and_the_run_is_usable(capsys, shapes, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = rcdm(
        capsys, "train", shapes, *COMMON, "--out", out, "--steps", 40, "--batch-size", 4,
        "--save-every", 20, "--log-every", 5, "--sample-every", 40, "--ema", "0.99", "--ema", "0.9", "--json",
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["step"] == 40 and not summary["stopped_by_signal"]
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == list(range(5, 41, 5))
    assert set(metrics[0]) >= {
        "step", "loss", "mse", "vb", "grad_norm", "lr", "img_per_s", "unreadable_at_scan", "unreadable_in_training",
    }
    assert np.mean([m["loss"] for m in metrics[-2:]]) < 0.7 * metrics[0]["loss"]
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["preset"] == "tiny" and config["images"] == 8
    assert (out / "previews" / "step-0000040.png").is_file()
    steps = [s for s, _ in RunDir(out).complete_checkpoints()]
    assert steps == [20, 40]
    meta = read_meta(out / "checkpoints" / "step-0000040" / "model.safetensors")
    assert meta.step == 40 and meta.weight_sets == ("model", "ema-0.99", "ema-0.9") and meta.default_weights == "ema-0.99"
    assert (meta.encoder.name, meta.encoder.layer, meta.encoder.preprocessing["name"]) == ("random", "backbone", "rcdm")
    # a run folder is a checkpoint: its newest EMA weights, with its encoder
    image = next(shapes.rglob("*.png"))
    code, stdout, err = rcdm(capsys, "sample", image, "-c", out, "-n", 1, "--steps", "ddim2", "--sampler", "ddim", "-o", tmp_path / "s", "--json")
    assert code == 0, err
    assert json.loads(stdout)["checkpoint"]["path"].endswith("step-0000040/model.safetensors")


def _config(data, out, **kw) -> TrainConfig:
    base = dict(
        data=str(data), out=str(out), encoder="random", preset="tiny", batch_size=4, steps=6, save_every=3,
        log_every=1, sample_every=1000, workers=0, lr=1e-3, cache_features=True, ema=[0.9],
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_resume_continues_exactly_from_any_working_directory(capsys, shapes, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    Trainer(_config(shapes, straight), CPU).run()
    # the split run is started with relative paths, and through a linked folder
    (tmp_path / "imgs").symlink_to(shapes, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    args = [*COMMON, "--batch-size", 4, "--save-every", 3, "--log-every", 1, "--sample-every", 1000, "--ema", 0.9]
    code, _, err = rcdm(capsys, "train", "imgs", *args, "--out", "split", "--steps", 3)
    assert code == 0, err
    split = tmp_path / "split"
    saved = json.loads((split / "config.json").read_text())
    assert saved["config"]["data"] == str(shapes.resolve()) and saved["config"]["out"] == str(split.resolve())
    assert saved["global_batch"] == 4
    with (split / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 4, "loss": 123.0}) + "\n")  # logged, never saved
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    # options that would change what the run computes are refused, all named at once
    code, _, err = rcdm(capsys, "train", "--resume", split, "--lr", 5, "--batch-size", 3, "--ema", 0.5, "--precision", "bf16")
    assert code == 2
    for part in ("--lr 5 (the run's: 0.001)", "--batch-size 3 (the run's: 4)", "--ema 0.5 (the run's: 0.9)", "--precision bf16 (the run's: fp32)"):
        assert part in err, err
    code, _, err = rcdm(capsys, "train", "--resume", split, "--steps", 2)
    assert code == 2 and "already at step 3" in err
    code, _, err = rcdm(capsys, "train", "--resume", split, "--overwrite")
    assert code == 2 and "cannot be combined" in err
    cfg = TrainConfig.from_dict(saved["config"])
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UsageError, match="global batch of 4 images does not split evenly over 3 processes"):
        Trainer(cfg, CPU, resume=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="--microbatch 4 does not divide the 2 images per process"):
        Trainer(TrainConfig.from_dict({**saved["config"], "microbatch": 4}), CPU, resume=True)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    with pytest.raises(RcdmError, match="another encoder input: preprocessing rcdm"):
        Trainer(TrainConfig.from_dict({**saved["config"], "preprocessing": "native"}), CPU, resume=True)

    # options that agree with the run, or only change how it runs, are taken
    code, _, err = rcdm(capsys, "train", "--resume", split, "--steps", 6, "--lr", "1e-3", "--encoder", "random", "--workers", 0)
    assert code == 0, err
    a, b = RunDir(straight).latest()[1], RunDir(split).latest()[1]
    for name in ("model", "ema-0.9"):
        wa, wb = _weights(a, name), _weights(b, name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    sa = torch.load(a / "state.pt", weights_only=True)
    sb = torch.load(b / "state.pt", weights_only=True)
    assert sa["samples_seen"] == sb["samples_seen"] == 24
    assert torch.equal(sa["optimizer"]["state"][0]["exp_avg"], sb["optimizer"]["state"][0]["exp_avg"])
    assert [m["step"] for m in _metrics(split)] == [1, 2, 3, 4, 5, 6]
    assert [m["loss"] for m in _metrics(split)] == pytest.approx([m["loss"] for m in _metrics(straight)])


@pytest.mark.slow
def test_microbatches_accumulate_to_the_same_step(shapes, tmp_path):
    """One step (Adam amplifies float rounding in near-zero gradients later on)."""
    Trainer(_config(shapes, tmp_path / "whole", steps=1, save_every=1), CPU).run()
    Trainer(_config(shapes, tmp_path / "micro", steps=1, save_every=1, microbatch=2), CPU).run()
    wa = _weights(RunDir(tmp_path / "whole").latest()[1])
    wb = _weights(RunDir(tmp_path / "micro").latest()[1])
    assert all(torch.allclose(wa[k], wb[k], atol=1e-8) for k in wa)


def test_official_flags_describe_the_model_instead_of_a_preset(capsys, shapes, tmp_path):
    from rcdm_cli.checkpoint.flags import to_official_flags
    from rcdm_cli.diffusion import PRESETS, DiffusionConfig

    flags = to_official_flags(PRESETS["tiny"].unet, DiffusionConfig(predict_xstart=True)) + " --lr 3e-4"
    base = ["--encoder", "random", "--workers", "0", "--cache-features", "--flags", flags]
    out = tmp_path / "x0"
    code, _, err = rcdm(capsys, "train", shapes, *base, "--out", out, "--steps", 1, "--batch-size", 2)
    assert code == 0, err
    meta = read_meta(RunDir(out).latest_model())
    assert meta.unet == PRESETS["tiny"].unet.with_rep_dim(2048) and meta.diffusion.predict_xstart
    code, _, err = rcdm(capsys, "train", shapes, *base, "--preset", "tiny", "--out", tmp_path / "y")
    assert code == 2 and "give --preset or --flags, not both" in err
    base[-1] = flags + " --timestep_respacing ddim10"
    code, _, err = rcdm(capsys, "train", shapes, *base, "--out", tmp_path / "y")
    assert code == 2 and "--timestep_respacing is a sampling setting" in err
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_loss_aware_sampler_and_augmentation_run_with_a_frozen_encoder(shapes, tmp_path, monkeypatch):
    from rcdm_cli.encoders.encoder import Encoder

    calls = []
    forward = Encoder.forward

    def watched(self, images, layer=None):
        out = forward(self, images, layer)
        calls.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), out.requires_grad, out.dtype))
        return out

    monkeypatch.setattr(Encoder, "forward", watched)
    cfg = _config(
        shapes, tmp_path / "aug", steps=2, cache_features=False, random_crop=True, random_flip=True,
        schedule_sampler="loss-second-moment", precision="bf16",
    )
    trainer = Trainer(cfg, CPU)
    summary = trainer.run()
    assert summary.step == 2
    state = torch.load(RunDir(tmp_path / "aug").latest()[1] / "state.pt", weights_only=True)
    assert sum(state["timestep_sampler"]["loss_counts"]) == 8  # every sample's loss recorded
    # the encoder ran without gradients and outside autocast (float32, as at sampling
    # time and in the feature cache), and none of its weights took a gradient
    assert len(calls) == 3  # the previews, then one batch per step
    assert calls[1:] == [(False, False, False, torch.float32)] * 2
    assert all(p.grad is None and not p.requires_grad for p in trainer.encoder.parameters())


def test_the_views_are_the_ones_sampling_computes():
    from rcdm_cli.preprocessing import RCDM, diffusion_target
    from rcdm_cli.training.data import Views, make_views

    rng = np.random.default_rng(1)
    for size in ((300, 200), (90, 130), (600, 470)):
        im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        target, enc = make_views(im, Views(32, 224), None, False)
        assert torch.equal(target, diffusion_target(im, 32))
        assert torch.equal(enc, RCDM.to_tensor(im)[0])
        flipped_target, flipped_enc = make_views(im, Views(32, 224, random_flip=True), None, True)
        assert torch.equal(flipped_target, target.flip(-1)) and torch.equal(flipped_enc, enc.flip(-1))


@pytest.mark.slow
def test_feature_cache_is_found_again_matches_live_features_and_is_invalidated(shapes, tmp_path, monkeypatch):
    from rcdm_cli.encoders import create_encoder
    from rcdm_cli.inputs import load_image
    from rcdm_cli.preprocessing import RCDM
    from rcdm_cli.training.data import Views, scan_images
    from rcdm_cli.training.features import cache_key, load_or_compute

    monkeypatch.setenv("RCDM_HOME", str(tmp_path / "home"))
    paths, _ = scan_images(shapes)
    enc = create_encoder("random", preprocessing=RCDM)
    views = Views(32, 224, random_flip=True)
    seen = []
    feats, where, hit = load_or_compute(paths, enc, "backbone", views, progress=lambda d, n: seen.append((d, n)))
    assert not hit and where.is_file() and seen[-1] == (8, 8)
    again, where_again, hit = load_or_compute(paths, enc, "backbone", views)
    assert hit and where_again == where and torch.equal(again, feats)
    # what sampling computes from the same files, one at a time
    pictures = [load_image(p) for p in paths]
    live = torch.cat([enc.encode(p, "backbone") for p in pictures])
    with torch.no_grad():
        mirrored = enc(torch.stack([RCDM.to_tensor(p)[0].flip(-1) for p in pictures]), "backbone")
    assert feats.shape == (8, 2, 2048)
    assert torch.allclose(feats[:, 0], live, atol=1e-5, rtol=1e-4)
    assert torch.allclose(feats[:, 1], mirrored, atol=1e-5, rtol=1e-4)

    key = cache_key(paths, enc, "backbone", views)
    assert key == cache_key(paths, enc, "backbone", views)
    assert key != cache_key(paths, enc, "layer3", views)
    assert key != cache_key(paths, create_encoder("random"), "backbone", views)  # native preprocessing
    assert key != cache_key(paths, enc, "backbone", Views(32, 224))
    st = paths[0].stat()
    os.utime(paths[0], (time.time() + 10, time.time() + 10))
    try:
        assert key != cache_key(paths, enc, "backbone", views)
    finally:  # the other tests' cache entry stays valid
        os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow
def test_bad_data(capsys, shapes, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("no images here")
    code, _, err = rcdm(capsys, "train", empty, *COMMON, "--out", tmp_path / "r0", "--steps", 1)
    assert code == 2 and "contains no readable images" in err and not (tmp_path / "r0").exists()

    broken = tmp_path / "broken"
    broken.mkdir()
    sources = sorted(shapes.rglob("*.png"))
    for i in range(3):
        _truncated(sources[i], broken / f"{i}.png")
    code, _, err = rcdm(capsys, "train", broken, *COMMON, "--out", tmp_path / "r2", "--steps", 1)
    assert code == 1 and "none of the 3 images" in err and "could be decoded" in err, err
    # one good image among 200 truncated ones: most batches cannot be filled
    (broken / "0.png").write_bytes(sources[0].read_bytes())
    for i in range(3, 200):
        _truncated(sources[0], broken / f"t{i:03d}.png")
    with pytest.raises(RcdmError, match=r"10 batches in a row held images that could not be decoded, even after trying 32"):
        Trainer(_config(broken, tmp_path / "r3", cache_features=False, steps=50), CPU).run()

    # six images in the folder, two through a linked folder; a truncated file sorts
    # first (so it would be the first preview); a header that cannot be read
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    for i, p in enumerate(sources):
        ((data if i < 6 else elsewhere) / f"{i}.png").write_bytes(p.read_bytes())
    (data / "linked").symlink_to(elsewhere, target_is_directory=True)
    (data / "header-only.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    _truncated(sources[0], data / "00-truncated.png")
    code, stdout, err = rcdm(
        capsys, "train", data, *COMMON, "--out", tmp_path / "r1", "--steps", 6, "--batch-size", 3, "--log-every", 3,
        "--save-every", 6, "--sample-every", 100, "--json",
    )
    assert code == 0, err
    config = json.loads((tmp_path / "r1" / "config.json").read_text())
    assert config["images"] == 9  # 8 good (2 linked) and the truncated one
    assert config["unreadable_images"] == [str(data / "header-only.jpg")]
    # 18 samples over 9 images: the truncated file is met twice, and counted once
    metrics = _metrics(tmp_path / "r1")
    assert (metrics[-1]["unreadable_at_scan"], metrics[-1]["unreadable_in_training"]) == (1, 1)
    summary = json.loads(stdout)
    assert (summary["unreadable_at_scan"], summary["unreadable_in_training"]) == (1, 1)
    assert "unreadable images: 1 left out at the scan, 1 replaced in training" in err
    state = torch.load(RunDir(tmp_path / "r1").latest()[1] / "state.pt", weights_only=True)
    assert state["unreadable_in_training"] == [str(data / "00-truncated.png")]
    assert state["samples_seen"] == 18


@pytest.mark.slow
def test_out_must_be_new_empty_or_a_run(capsys, shapes, tmp_path):
    args = [*COMMON, "--steps", 1, "--batch-size", 2, "--save-every", 1, "--log-every", 1, "--sample-every", 100]
    run_dir = tmp_path / "r"
    Trainer(_config(shapes, run_dir, steps=3), CPU).run()
    code, _, err = rcdm(capsys, "train", shapes, *args, "--out", run_dir)
    assert code == 2 and f"--resume {run_dir}" in err
    code, _, err = rcdm(capsys, "train", shapes, *args, "--out", run_dir, "--overwrite")
    assert code == 0, err
    assert [s for s, _ in RunDir(run_dir).complete_checkpoints()] == [1]
    assert [m["step"] for m in _metrics(run_dir)] == [1]

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"not": "a run"}')
    (other / "notes.txt").write_text("keep me")
    code, _, err = rcdm(capsys, "train", shapes, *args, "--out", other)
    assert code == 2 and "not empty and holds no training run" in err
    assert (other / "config.json").read_text() == '{"not": "a run"}'
    code, _, err = rcdm(capsys, "train", shapes, *args, "--out", other, "--overwrite")
    assert code == 0, err
    assert json.loads((other / "config.json").read_text())["config"]["steps"] == 1
    assert (other / "notes.txt").read_text() == "keep me"

    # a run stopped before its first save starts afresh, without the old curve or previews
    early = tmp_path / "early"
    (early / "previews").mkdir(parents=True)
    (early / "config.json").write_text((other / "config.json").read_text())
    (early / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 99.0}) + "\n")
    (early / "previews" / "step-0000001.png").write_bytes(b"old")
    code, _, err = rcdm(capsys, "train", shapes, *args, "--out", early)
    assert code == 0, err
    assert [m["loss"] for m in _metrics(early)] != [99.0] and len(_metrics(early)) == 1
    assert not (early / "previews" / "step-0000001.png").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shapes, tmp_path, monkeypatch):
    from rcdm_cli.diffusion.gaussian import GaussianDiffusion

    original = GaussianDiffusion.training_losses
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        terms = original(self, *args, **kwargs)
        if calls["n"] > 4:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(GaussianDiffusion, "training_losses", flaky)
    with pytest.raises(RcdmError, match=r"loss became NaN or infinite at step 5.*last good checkpoint is .*step-0000003"):
        Trainer(_config(shapes, tmp_path / "nan", steps=10), CPU).run()
    assert [s for s, _ in RunDir(tmp_path / "nan").complete_checkpoints()] == [3]


@pytest.mark.slow
def test_non_finite_weights_are_never_saved(shapes, tmp_path, monkeypatch):
    from rcdm_cli.training.ema import EMA

    original = EMA.update
    calls = {"n": 0}

    def poisoned(self, model, *args):
        calls["n"] += 1
        if calls["n"] == 6:  # the weights break after the last step before a save
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        original(self, model, *args)

    monkeypatch.setattr(EMA, "update", poisoned)
    with pytest.raises(RcdmError, match=r"weights became NaN or infinite at step 6.*last good checkpoint is .*step-0000003"):
        Trainer(_config(shapes, tmp_path / "inf", steps=9), CPU).run()
    assert [s for s, _ in RunDir(tmp_path / "inf").complete_checkpoints()] == [3]


@pytest.mark.slow
def test_a_failed_save_keeps_the_previous_checkpoint(shapes, tmp_path, monkeypatch):
    import rcdm_cli.checkpoint.rundir as rundir

    real_save = torch.save
    calls = {"n": 0}

    def disk_full(obj, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(rundir.torch, "save", disk_full)
    with pytest.raises(RcdmError, match=r"could not save the checkpoint of step 6: No space left on device; the previous checkpoint .*step-0000003.* is intact"):
        Trainer(_config(shapes, tmp_path / "full", steps=9), CPU).run()
    run_dir = RunDir(tmp_path / "full")
    assert [s for s, _ in run_dir.complete_checkpoints()] == [3]
    assert not list((tmp_path / "full" / "checkpoints").glob(".tmp-*"))
    assert _weights(run_dir.latest()[1])  # readable


@pytest.mark.slow
def test_terminal_plain_and_quiet_output(capsys, shapes, tmp_path, monkeypatch):
    import rcdm_cli.cli.console as console
    from rich.console import Console

    args = [shapes, *COMMON, "--steps", 2, "--batch-size", 2, "--save-every", 2, "--log-every", 1, "--sample-every", 100]
    code, _, err = rcdm(capsys, "train", *args, "--out", tmp_path / "plain")
    assert code == 0, err
    assert "rcdm: step 2: mean over the last 1 step(s): loss" in err and "rcdm: finished at step 2" in err
    assert "mean loss" in err.splitlines()[-1] and "over the last 1 step(s)" in err.splitlines()[-1]
    assert "step 2/2 mean loss" not in err  # no bar in a batch log

    code, out, err = rcdm(capsys, "--quiet", "train", *args, "--out", tmp_path / "quiet", "--json")
    summary = json.loads(out)
    assert code == 0 and err == "" and summary["step"] == 2
    last = json.loads((tmp_path / "quiet" / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["final_loss"] == last["loss"] and summary["final_loss_steps"] == last["window_steps"] == 1

    screen = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=screen, force_terminal=True, color_system=None, width=160))
    code, _, err = rcdm(capsys, "train", *args, "--out", tmp_path / "terminal")
    assert code == 0, err
    shown = screen.getvalue()
    assert "step 2/2 mean loss" in shown and "img/s" in shown  # the bar
    assert "finished at step 2" in shown and "rcdm: " not in shown  # rich log lines


# --- processes: SIGKILL, SIGTERM, torchrun -------------------------------------------------


def _train_process(data, out, home, *extra, env_extra=None):
    """A training process in its own process group (as a batch job's step is)."""
    env = {**os.environ, "RCDM_HOME": str(home), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "rcdm_cli", "train", str(data), *COMMON, "--out", str(out), "--batch-size", "2", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for(predicate, timeout: float, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()}")
        time.sleep(0.2)
    return False


def _last_logged(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_sigkill_loses_at_most_the_steps_since_the_last_save(shapes, tmp_path, home):
    out = tmp_path / "killed"
    proc = _train_process(shapes, out, home, "--steps", "10000", "--save-every", "3", "--log-every", "1", "--sample-every", "100000")
    try:
        assert _wait_for(lambda: len(RunDir(out).complete_checkpoints()) >= 2, 300, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        _kill_group(proc)
    last_logged = _last_logged(out)
    run_dir = RunDir(out)
    for step, d in run_dir.complete_checkpoints():  # every complete-looking checkpoint really is complete
        assert read_meta(d / "model.safetensors").step == step
        assert torch.load(d / "state.pt", weights_only=True)["step"] == step
    saved = run_dir.latest()[0]
    assert last_logged - saved <= 3
    env = {**os.environ, "RCDM_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "rcdm_cli", "train", "--resume", str(out), "--steps", str(saved + 2), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["step"] == saved + 2
    assert [m["step"] for m in _metrics(out)] == list(range(1, saved + 3))


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, workers, whole_group",
    [(signal.SIGTERM, 2, True), (signal.SIGUSR1, 0, False)],
    ids=["SIGTERM-to-the-process-group-with-workers", "SIGUSR1"],
)
def test_preemption_signals_save_and_exit_0(shapes, tmp_path, home, sig, workers, whole_group):
    """A scheduler signals the whole process group, data-loading workers included."""
    out = tmp_path / sig.name
    proc = _train_process(
        shapes, out, home, "--steps", "10000", "--save-every", "1000", "--log-every", "1", "--sample-every", "100000",
        "--workers", str(workers),
    )
    try:
        assert _wait_for(lambda: _last_logged(out) >= 2, 300, proc)
        sent = time.time()
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        code = proc.wait(60)
        elapsed = time.time() - sent
    finally:
        _kill_group(proc)
    stderr = proc.stderr.read()
    assert code == 0, stderr
    assert elapsed < 30
    assert f"{sig.name} received: saving step" in stderr
    step, _ = RunDir(out).latest()
    assert step >= 2 and step == _last_logged(out)


@pytest.mark.slow
def test_a_signal_during_setup_stops_cleanly(shapes, tmp_path):
    """SIGTERM while the encoder loads or the feature cache is computed (a fresh cache
    here, by two data-loading workers): exit 0 at once, nothing written."""
    out = tmp_path / "setup"
    proc = _train_process(shapes, out, tmp_path / "fresh-home", "--steps", "10000", "--workers", "2")
    try:
        lines = []
        while not any("loading encoder" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"training exited early: {''.join(lines)}"
            lines.append(line)
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
    finally:
        _kill_group(proc)
    stderr = "".join(lines) + proc.stderr.read()
    assert code == 0, stderr
    assert "SIGTERM received before training started" in stderr
    assert "stopped before training started, at step 0" in stderr
    assert RunDir(out).latest() is None and not (out / "config.json").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(mixed, tmp_path, home):
    """Data with truncated files, one of which fills rank 0's whole first slice; the
    two processes compute the feature cache together, in an empty RCDM_HOME."""
    names = sorted(p.name for p in mixed.iterdir())
    first_slice = next(iter(StepBatches(len(names), 2, 2, 0, seed=0)))
    assert all(names[i].startswith("t") for i, _ in first_slice)  # what this test is about

    shared_home = tmp_path / "home-two"
    env = {**os.environ, "RCDM_HOME": str(shared_home), "OMP_NUM_THREADS": "1"}
    args = [*COMMON, "--steps", "3", "--save-every", "1", "--keep", "3", "--log-every", "1", "--sample-every", "1000"]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "rcdm_cli", "train", str(mixed), *args, "--out", str(tmp_path / "two"), "--batch-size", "2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr
    assert two.stderr.count("loading encoder") == 1  # only rank 0 talks
    one = subprocess.run(
        [sys.executable, "-m", "rcdm_cli", "train", str(mixed), *args, "--out", str(tmp_path / "one"), "--batch-size", "4"],
        env={**env, "RCDM_HOME": str(home)}, capture_output=True, text=True, timeout=600,
    )
    assert one.returncode == 0, one.stderr
    runs = {name: RunDir(tmp_path / name).complete_checkpoints() for name in ("two", "one")}
    assert [s for s, _ in runs["two"]] == [1, 2, 3]
    for step, d in runs["two"]:  # the processes' copies stayed identical at every save
        state = torch.load(d / "state.pt", weights_only=True)
        assert state["world_size"] == 2
        assert len(state["weight_fingerprints"]) == 2 and len(set(state["weight_fingerprints"])) == 1
    # after one step, the same weights as one process with the same global batch (later
    # steps agree to float rounding, which Adam amplifies in near-zero gradients)
    w_two, w_one = _weights(runs["two"][0][1]), _weights(runs["one"][0][1])
    for k in w_one:
        assert torch.allclose(w_two[k], w_one[k], atol=1e-7), k
    m_two, m_one = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert [m["loss"] for m in m_two] == pytest.approx([m["loss"] for m in m_one], rel=1e-4)
    # one epoch in 3 steps: every truncated file met, and replaced alike in both runs
    assert m_two[-1]["unreadable_in_training"] == m_one[-1]["unreadable_in_training"] == 4
    # the cache computed by two processes holds what one process computes
    (cache_two,) = (shared_home / "features").glob("*.safetensors")
    from safetensors.torch import load_file

    f_two = load_file(str(cache_two))["features"]
    f_one = load_file(str(home / "features" / cache_two.name))["features"]
    assert torch.allclose(f_two, f_one, atol=1e-5, equal_nan=True)

    # resumed by one process, the run keeps its global batch of 4
    resumed = subprocess.run(
        [sys.executable, "-m", "rcdm_cli", "train", "--resume", str(tmp_path / "two"), "--steps", "4", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "keeping the run's global batch of 4: 4 images on each of 1 process(es)" in resumed.stderr
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert (config["global_batch"], config["world_size"], config["config"]["batch_size"]) == (4, 1, 4)
    assert torch.load(RunDir(tmp_path / "two").latest()[1] / "state.pt", weights_only=True)["samples_seen"] == 16


def test_usage_errors(capsys, shapes, tmp_path):
    code, _, err = rcdm(capsys, "train", shapes, "--encoder", "random", "--out", tmp_path / "x", "--microbatch", 3, "--batch-size", 4)
    assert code == 2 and "must divide" in err
    code, _, err = rcdm(capsys, "train", shapes, "--encoder", "random", "--out", tmp_path / "x", "--precision", "fp16")
    assert code == 2 and "CUDA" in err
    code, _, err = rcdm(capsys, "train", shapes, "--encoder", "random", "--out", tmp_path / "x", "--layer", "head")
    assert code == 2 and "has no layer 'head'" in err
    code, _, err = rcdm(capsys, "train", shapes, "--encoder", "random", "--out", tmp_path / "x", "--weights", tmp_path / "none.pt")
    assert code == 2 and "no such weights file" in err
    code, _, err = rcdm(capsys, "train", "--resume", tmp_path / "nothing")
    assert code == 2 and "not a training run" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_newest_checkpoint(capsys, shapes, tmp_path):
    """A newest checkpoint cut short (a full disk, an interrupted copy) is named and
    skipped, as a deleted one would be; the run continues exactly from the one before."""
    out = tmp_path / "run"
    args = [*COMMON, "--batch-size", 4, "--save-every", 3, "--log-every", 1, "--sample-every", 1000, "--ema", 0.9]
    code, _, err = rcdm(capsys, "train", shapes, *args, "--out", out, "--steps", 6, "--keep", 2)
    assert code == 0, err
    run_dir = RunDir(out)
    (step3, older), (step6, newest) = run_dir.complete_checkpoints()
    model = newest / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-1000])  # truncated
    code, _, err = rcdm(capsys, "train", "--resume", out, "--steps", 9)
    assert code == 0, err
    assert f"checkpoint {newest} is damaged" in err and "resuming from the one before it" in err
    assert "resuming" in err and "at step 3" in err
    assert run_dir.latest()[0] == 9
    # a damaged state.pt is found the same way, and with none left the error says so
    for _, d in run_dir.complete_checkpoints():
        (d / "state.pt").write_bytes((d / "state.pt").read_bytes()[:100])
    code, _, err = rcdm(capsys, "train", "--resume", out, "--steps", 12)
    assert code == 1 and "no readable checkpoint to resume from" in err.strip().splitlines()[-1]


def test_checkpoint_folders_respect_the_umask(shapes, tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        Trainer(_config(shapes, tmp_path / "run", steps=1, save_every=1), CPU).run()
    finally:
        os.umask(previous)
    step_dir = RunDir(tmp_path / "run").latest()[1]
    assert step_dir.stat().st_mode & 0o777 == 0o755  # readable by colleagues, as mkdir makes it
    assert (step_dir / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_a_full_disk_during_torch_save_is_named_and_the_previous_checkpoint_kept(capsys, shapes, tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError about stream positions; the
    run says what happened instead of an internal error."""
    import rcdm_cli.checkpoint.rundir as rundir

    real_save = torch.save
    calls = {"n": 0}

    def stream_failure(obj, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(rundir.torch, "save", stream_failure)
    args = [shapes, *COMMON, "--batch-size", 4, "--steps", 6, "--save-every", 3, "--log-every", 1, "--sample-every", 1000]
    code, _, err = rcdm(capsys, "train", *args, "--out", tmp_path / "full")
    line = err.strip().splitlines()[-1]
    assert code == 1 and "internal error" not in line
    assert "could not save the checkpoint of step 6: writing state.pt failed with" in line and "MiB free" in line
    assert "step-0000003) is intact" in line


# --- the command line's options as a run's configuration --------------------------------------------


def _saved_run(tmp_path: Path) -> Path:
    """A run folder holding only the configuration --resume reads."""
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(data=str(tmp_path / "data"), out=str(run), encoder="random", preset="tiny", batch_size=4, lr=1e-3)
    (run / "config.json").write_text(json.dumps({"config": config.to_dict()}))
    return run


def test_a_resumed_run_keeps_its_settings_and_takes_only_the_options_that_may_change(tmp_path):
    from rcdm_cli.training.config import resumed_config

    run = _saved_run(tmp_path)
    merged = resumed_config(run, {"steps": 50, "lr": 1e-3, "workers": 2}, {"steps", "lr"})
    assert (merged.steps, merged.lr, merged.workers, merged.batch_size) == (50, 1e-3, 4, 4)  # workers was not given
    assert merged.out == str(run) and merged.encoder == "random" and merged.data == str(tmp_path / "data")
    with pytest.raises(UsageError) as refused:
        resumed_config(run, {"lr": 5.0, "precision": "bf16", "steps": 9}, {"lr", "precision", "steps"})
    assert "--lr 5 (the run's: 0.001)" in str(refused.value) and "--precision bf16 (the run's: fp32)" in str(refused.value)
    with pytest.raises(UsageError, match="leave DATA out"):
        resumed_config(run, {}, set(), data=tmp_path / "other")
    with pytest.raises(UsageError, match="leave --out out"):
        resumed_config(run, {}, set(), out=tmp_path / "elsewhere")
    assert resumed_config(run, {}, set(), data=tmp_path / "data", out=run).steps == 500_000


def test_options_become_a_new_run_with_the_presets_suggestions(tmp_path):
    from rcdm_cli.training.config import config_from_options, preset_training

    options = dict(encoder="random", weights=None, ema=(0.5,), preset=None, flags=None, batch_size=None, lr=None)
    config = config_from_options(options, set(), data=tmp_path, out=tmp_path / "run")
    suggested = preset_training("rcdm-128")
    assert config.preset == "rcdm-128" and config.ema == [0.5] and config.out == str(tmp_path / "run")
    assert (config.batch_size, config.lr) == (suggested.get("batch_size", 8), suggested.get("lr", 1e-4))
    given = config_from_options({**options, "batch_size": 3, "lr": 2e-3}, {"batch_size", "lr"}, data=tmp_path, out=tmp_path)
    assert (given.batch_size, given.lr) == (3, 2e-3)
    with pytest.raises(UsageError, match="give DATA, --encoder and --out"):
        config_from_options(options, set(), data=tmp_path)
    with pytest.raises(UsageError, match="cannot be combined with --resume"):
        config_from_options(options, set(), resume=_saved_run(tmp_path), overwrite=True)


# --- what the run tells its caller ------------------------------------------------------------------


def test_previews_say_that_they_are_sampled_and_how_far_they_are(shapes, tmp_path):
    from rcdm_cli.training.reporting import Reporter

    class Recorder(Reporter):
        def __init__(self):
            self.events, self.progresses = [], []

        def event(self, message):
            self.events.append(message)

        def progress(self, task, done, total):
            self.progresses.append((task, done, total))

    recorder = Recorder()
    config = TrainConfig(
        data=str(shapes), out=str(tmp_path / "run"), encoder="random", preset="tiny", workers=0, cache_features=True,
        lr=1e-3, batch_size=4, steps=1, save_every=1, sample_every=1, preview_images=2, preview_samples=2,
    )
    Trainer(config, CPU, reporter=recorder).run()
    assert "step 1: sampling 4 preview images (DDIM, ddim25)" in recorder.events
    previews = [(done, total) for task, done, total in recorder.progresses if task == "sampling the previews of step 1"]
    assert previews == [(k, 25) for k in range(1, 26)]  # one batch of four: the 25 DDIM steps


@pytest.mark.slow
def test_the_command_shows_the_previews_progress_and_what_it_wrote(capsys, shapes, tmp_path):
    out = tmp_path / "run"
    code, _, err = rcdm(
        capsys, "train", shapes, *COMMON, "--batch-size", 4, "--steps", 1, "--save-every", 1, "--sample-every", 1, "--out", out,
    )
    assert code == 0, err
    assert "rcdm: step 1: sampling 16 preview images (DDIM, ddim25)" in err
    assert "rcdm: sampling the previews of step 1: 100/100" in err  # four batches of four, 25 steps each
    written, last = err.strip().splitlines()[-2:]
    assert last.startswith("rcdm: finished at step 1") and "latest checkpoint: " in last
    assert written == (
        f"rcdm: written in {out.resolve()}: config.json, metrics.jsonl, 1 checkpoint(s) in checkpoints/ "
        "(latest step-0000001), 1 preview grid(s) in previews/ (latest step-0000001.png)"
    )
