"""Training the `tiny` preset on generated images, on the CPU: learning, resuming,
signals, torchrun, bad data and faults."""

import errno
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

from rcdm_cli.checkpoint.rundir import RunDir
from rcdm_cli.checkpoint.store import load_checkpoint, read_meta
from rcdm_cli.cli.app import run
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.training.config import TrainConfig
from rcdm_cli.training.loop import Trainer

COMMON = ["--encoder", "random", "--preset", "tiny", "--workers", "0", "--lr", "1e-3", "--cache-features"]


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


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One RCDM_HOME for the module, so the feature cache is computed once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _shared_home(home, monkeypatch):
    monkeypatch.setenv("RCDM_HOME", str(home))


def rcdm(capsys, *args):
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(step_dir: Path, name: str = "model") -> dict[str, torch.Tensor]:
    return load_checkpoint(step_dir / "model.safetensors", weights=name)[1]


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
    assert set(metrics[0]) >= {"step", "loss", "mse", "vb", "grad_norm", "lr", "img_per_s", "skipped_images"}
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


def test_resume_continues_exactly(shapes, tmp_path):
    straight = tmp_path / "straight"
    Trainer(_config(shapes, straight), torch.device("cpu")).run()
    split = tmp_path / "split"
    Trainer(_config(shapes, split, steps=3), torch.device("cpu")).run()
    (split / "metrics.jsonl").open("a").write(json.dumps({"step": 4, "loss": 123.0}) + "\n")  # logged, never saved
    cfg = TrainConfig.from_dict(json.loads((split / "config.json").read_text())["config"])
    cfg.steps = 6
    Trainer(cfg, torch.device("cpu"), resume=True).run()
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


def test_microbatches_accumulate_to_the_same_step(shapes, tmp_path):
    """One step (Adam amplifies float rounding in near-zero gradients later on)."""
    Trainer(_config(shapes, tmp_path / "whole", steps=1, save_every=1), torch.device("cpu")).run()
    Trainer(_config(shapes, tmp_path / "micro", steps=1, save_every=1, microbatch=2), torch.device("cpu")).run()
    wa = _weights(RunDir(tmp_path / "whole").latest()[1])
    wb = _weights(RunDir(tmp_path / "micro").latest()[1])
    assert all(torch.allclose(wa[k], wb[k], atol=1e-8) for k in wa)


def test_loss_aware_sampler_and_augmentation_run(shapes, tmp_path):
    cfg = _config(
        shapes, tmp_path / "aug", steps=2, cache_features=False, random_crop=True, random_flip=True,
        schedule_sampler="loss-second-moment",
    )
    summary = Trainer(cfg, torch.device("cpu")).run()
    assert summary.step == 2
    state = torch.load(RunDir(tmp_path / "aug").latest()[1] / "state.pt", weights_only=True)
    assert sum(state["timestep_sampler"]["loss_counts"]) == 8  # every sample's loss recorded


def test_feature_cache_is_reused_and_invalidated(shapes, tmp_path, home):
    from rcdm_cli.encoders import create_encoder
    from rcdm_cli.training.data import Views, scan_images
    from rcdm_cli.training.features import cache_key
    from rcdm_cli.preprocessing import RCDM

    paths, _ = scan_images(shapes)
    enc = create_encoder("random", preprocessing=RCDM)
    views = Views(32, 224)
    key = cache_key(paths, enc, "backbone", views)
    assert key == cache_key(paths, enc, "backbone", views)
    assert key != cache_key(paths, enc, "layer3", views)
    assert key != cache_key(paths, create_encoder("random"), "backbone", views)  # native preprocessing
    assert key != cache_key(paths, enc, "backbone", Views(32, 224, random_flip=True))
    os.utime(paths[0], (time.time() + 10, time.time() + 10))
    assert key != cache_key(paths, enc, "backbone", views)


def test_bad_data(capsys, shapes, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("no images here")
    code, _, err = rcdm(capsys, "train", empty, *COMMON, "--out", tmp_path / "r0", "--steps", 1)
    assert code == 2 and "contains no readable images" in err and not (tmp_path / "r0").exists()

    data = tmp_path / "data"
    data.mkdir()
    for i, p in enumerate(sorted(shapes.rglob("*.png"))):
        (data / f"{i}.png").write_bytes(p.read_bytes())
    (data / "header-only.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")  # unreadable header
    good = (data / "0.png").read_bytes()
    (data / "truncated.png").write_bytes(good[: len(good) // 2])  # header fine, pixels missing
    code, _, err = rcdm(
        capsys, "train", data, *COMMON, "--out", tmp_path / "r1", "--steps", 6, "--batch-size", 3, "--log-every", 3,
        "--save-every", 6, "--sample-every", 100,
    )
    assert code == 0, err
    config = json.loads((tmp_path / "r1" / "config.json").read_text())
    assert config["unreadable_images"] == [str(data / "header-only.jpg")]
    metrics = _metrics(tmp_path / "r1")
    assert metrics[-1]["skipped_images"] >= 1  # the truncated file, met during training
    assert "unreadable image(s) skipped" in err


def test_existing_run_is_not_overwritten(capsys, shapes, tmp_path):
    Trainer(_config(shapes, tmp_path / "r", steps=3), torch.device("cpu")).run()
    code, _, err = rcdm(capsys, "train", shapes, *COMMON, "--out", tmp_path / "r", "--steps", 3)
    assert code == 2 and "--resume" in err


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
    with pytest.raises(RcdmError, match=r"NaN or infinite at step 5.*last good checkpoint is .*step-0000003"):
        Trainer(_config(shapes, tmp_path / "nan", steps=10), torch.device("cpu")).run()
    assert [s for s, _ in RunDir(tmp_path / "nan").complete_checkpoints()] == [3]


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
        Trainer(_config(shapes, tmp_path / "full", steps=9), torch.device("cpu")).run()
    run_dir = RunDir(tmp_path / "full")
    assert [s for s, _ in run_dir.complete_checkpoints()] == [3]
    assert not list((tmp_path / "full" / "checkpoints").glob(".tmp-*"))
    assert _weights(run_dir.latest()[1])  # readable


# --- processes: SIGKILL, SIGTERM, torchrun -------------------------------------------------


def _train_process(shapes, out, home, *extra, env_extra=None):
    env = {**os.environ, "RCDM_HOME": str(home), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "rcdm_cli", "train", str(shapes), *COMMON, "--out", str(out), "--batch-size", "2", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
        proc.kill()
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
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signals_save_and_exit_0(shapes, tmp_path, home, sig):
    out = tmp_path / sig.name
    proc = _train_process(shapes, out, home, "--steps", "10000", "--save-every", "1000", "--log-every", "1", "--sample-every", "100000")
    try:
        assert _wait_for(lambda: _last_logged(out) >= 2, 300, proc)
        sent = time.time()
        proc.send_signal(sig)
        code = proc.wait(60)
        elapsed = time.time() - sent
    finally:
        proc.kill()
    assert code == 0, proc.stderr.read()
    assert elapsed < 30
    step, _ = RunDir(out).latest()
    assert step >= 2 and step == _last_logged(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(shapes, tmp_path, home):
    env = {**os.environ, "RCDM_HOME": str(home), "OMP_NUM_THREADS": "1"}
    args = [*COMMON, "--steps", "3", "--save-every", "1", "--keep", "3", "--log-every", "1", "--sample-every", "1000"]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "rcdm_cli", "train", str(shapes), *args, "--out", str(tmp_path / "two"), "--batch-size", "2"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr
    one = subprocess.run(
        [sys.executable, "-m", "rcdm_cli", "train", str(shapes), *args, "--out", str(tmp_path / "one"), "--batch-size", "4"],
        env=env, capture_output=True, text=True, timeout=600,
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
    assert [m["loss"] for m in _metrics(tmp_path / "two")] == pytest.approx([m["loss"] for m in _metrics(tmp_path / "one")], rel=1e-4)


def test_usage_errors(capsys, shapes, tmp_path):
    code, _, err = rcdm(capsys, "train", shapes, "--encoder", "random", "--out", tmp_path / "x", "--microbatch", 3, "--batch-size", 4)
    assert code == 2 and "must divide" in err
    code, _, err = rcdm(capsys, "train", shapes, "--encoder", "random", "--out", tmp_path / "x", "--precision", "fp16")
    assert code == 2 and "CUDA" in err
    code, _, err = rcdm(capsys, "train", shapes, "--encoder", "random", "--out", tmp_path / "x", "--layer", "head")
    assert code == 2 and "has no layer 'head'" in err
    code, _, err = rcdm(capsys, "train", "--resume", tmp_path / "nothing")
    assert code == 2 and "not a training run" in err
    assert not (tmp_path / "x").exists()
