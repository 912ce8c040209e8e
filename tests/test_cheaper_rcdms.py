"""Cheaper RCDMs: warm starts (--init), the conditioning-only phase, EMA warm-up, the
weight-set choice, the ignored-conditioning warning, the cpu preset, conditioning
dropout and representation guidance."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from helpers import rcdm
from rcdm_cli.checkpoint.hashing import file_sha256
from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.checkpoint.rundir import RunDir
from rcdm_cli.checkpoint.store import load_checkpoint, read_meta, save_checkpoint
from rcdm_cli.diffusion import PRESETS, UNet
from rcdm_cli.errors import UsageError
from rcdm_cli.pipeline.diagnostics import IGNORED_BELOW_LEVELS, conditioning_effect
from rcdm_cli.pipeline.model import RCDMModel
from rcdm_cli.training.config import TrainConfig
from rcdm_cli.training.ema import EMA
from rcdm_cli.training.loop import Trainer
from rcdm_cli.training.reporting import Reporter

CPU = torch.device("cpu")
ENCODER = ["--encoder", "scenes-simclr", "--preprocessing", "native", "--workers", "0", "--cache-features"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """Eight small scenes: a disc of one colour on a plain background of another."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(1)
    for i in range(8):
        im = Image.new("RGB", (40, 40), tuple(int(c) for c in rng.integers(0, 255, 3)))
        x, y = rng.integers(0, 20, 2)
        ImageDraw.Draw(im).ellipse([x, y, x + 16, y + 16], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        im.save(root / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def _home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RCDM_HOME", str(tmp_path_factory.getbasetemp() / "cheap-home"))


def _config(data, out, **kw) -> TrainConfig:
    base = dict(
        data=str(data), out=str(out), encoder="scenes-simclr", layer="backbone", preprocessing="native", preset="tiny",
        batch_size=4, steps=4, save_every=4, log_every=2, sample_every=1000, workers=0, lr=1e-3, cache_features=True,
        ema=[0.9],
    )
    base.update(kw)
    return TrainConfig(**base)


def _step_file(run_dir: Path) -> Path:
    return RunDir(run_dir).latest_model()


@pytest.fixture(scope="module")
def parent(pictures, tmp_path_factory) -> Path:
    """A short run on the backbone (128-d) of scenes-simclr, with a null representation."""
    out = tmp_path_factory.mktemp("parent") / "run"
    Trainer(_config(pictures, out, cond_drop=0.5), CPU).run()
    return out


# --- EMA warm-up -----------------------------------------------------------------------


def test_ema_warm_up_follows_the_weights_early_and_reaches_the_rate():
    assert EMA.decay(0.9999, 0) == pytest.approx(0.1)
    assert EMA.decay(0.9999, 90) == pytest.approx(91 / 100)
    assert EMA.decay(0.9, 10_000) == 0.9 and EMA.decay(0.9999, None) == 0.9999
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, [0.9999])
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, 0)  # decay 0.1: the average moves 90% of the way
    assert ema.shadows[0.9999]["weight"].item() == pytest.approx(0.9)
    ema.update(model)  # no warm-up: the rate itself
    assert ema.shadows[0.9999]["weight"].item() == pytest.approx(0.9 + 0.1 * 1e-4)


def test_new_runs_record_warm_up_and_runs_saved_before_it_resume_without(parent):
    saved = json.loads((parent / "config.json").read_text())["config"]
    assert saved["ema_warmup"] is True
    del saved["ema_warmup"]  # a config.json written before warm-up existed
    assert TrainConfig.from_dict(saved).ema_warmup is False


# --- which weights to sample, and a model that ignores its conditioning ------------------


class _Warnings(Reporter):
    def __init__(self):
        self.warnings = []

    def warning(self, message):
        self.warnings.append(message)


@pytest.mark.slow
def test_a_short_run_without_warm_up_ignores_its_conditioning_and_says_so(pictures, tmp_path, capsys):
    out = tmp_path / "plain"
    reporter = _Warnings()
    trainer = Trainer(_config(pictures, out, ema=[0.9999], ema_warmup=False, steps=3, sample_every=3, save_every=3), CPU)
    trainer.reporter = reporter
    trainer.run()
    assert len(reporter.warnings) == 1
    assert "ignores its conditioning" in reporter.warnings[0] and "--weights-set model" in reporter.warnings[0]
    images = sorted(pictures.glob("*.png"))[:2]
    code, stdout, err = rcdm(capsys, "sample", *images, "-c", out, "-n", 1, "-o", tmp_path / "s", "--json")
    assert code == 0, err
    assert "ignores its conditioning" in err and err.count("ignores its conditioning") == 1
    assert json.loads(stdout)["checkpoint"]["weight_set"] == "ema-0.9999"
    # the raw weights are another set, named in the manifest
    code, stdout, err = rcdm(capsys, "sample", *images, "-c", out, "-n", 1, "-o", tmp_path / "m", "--weights-set", "model", "--json")
    assert code == 0, err
    assert json.loads(stdout)["checkpoint"]["weight_set"] == "model"
    a = np.asarray(Image.open(tmp_path / "s" / f"{images[0].stem}" / "sample-000.png"))
    b = np.asarray(Image.open(tmp_path / "m" / f"{images[0].stem}" / "sample-000.png"))
    assert np.abs(a.astype(int) - b).max() > 0


@pytest.fixture(scope="module")
def following(tmp_path_factory) -> Path:
    """A `tiny` checkpoint on 8-d vectors whose random weights are large enough that
    its samples change with the representation (at the fixtures' usual scale of 0.05
    they hardly do, and the warning says so)."""
    unet = UNet(PRESETS["tiny"].unet.with_rep_dim(8))
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * 0.2 for k, v in unet.state_dict().items()}
    path = tmp_path_factory.mktemp("following") / "tiny.safetensors"
    meta = CheckpointMeta(unet=unet.config, diffusion=PRESETS["tiny"].diffusion, source={"kind": "test"})
    save_checkpoint(path, {"model": state}, meta)
    return path


def test_a_model_that_follows_its_conditioning_gets_no_warning(following, tiny_checkpoint, capsys, tmp_path):
    args = ["--rep", "random:3", "-n", 1, "--steps", "ddim2", "--sampler", "ddim"]
    code, _, err = rcdm(capsys, "sample", *args, "-c", following, "-o", tmp_path / "s")
    assert code == 0, err
    assert "ignores" not in err
    code, _, err = rcdm(capsys, "sample", *args, "-c", tiny_checkpoint, "-o", tmp_path / "t")
    assert code == 0 and "ignores its conditioning: its image changes by 0.06 grey levels" in err
    code, _, err = rcdm(capsys, "sample", *args, "-c", "init:tiny", "-o", tmp_path / "u")
    assert code == 0 and "ignores" not in err  # untrained by request: no warning, and no check to pay for


def test_the_conditioning_effect_is_zero_for_a_model_blind_to_its_representation(following):
    _, state = load_checkpoint(following)
    meta = read_meta(following)
    unet = UNet(meta.unet)
    unet.load_state_dict(state)
    model = RCDMModel(unet.eval(), meta, CPU)
    reps = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    assert conditioning_effect(model, reps) > 10 * IGNORED_BELOW_LEVELS
    assert conditioning_effect(model, reps[:1]) > IGNORED_BELOW_LEVELS  # one input: compared with itself reversed
    with torch.no_grad():
        unet.ssl_emb.weight.zero_()
    assert conditioning_effect(model, reps) == 0.0


def test_weight_set_refusals(tiny_checkpoint, capsys, tmp_path):
    code, _, err = rcdm(capsys, "sample", "--rep", "random", "-c", tiny_checkpoint, "--weights-set", "ema-0.5", "-o", tmp_path / "s")
    assert code == 2 and "has no weight set 'ema-0.5'; it has: model" in err
    # a released file holds its EMA weights only; refused before any download
    code, _, err = rcdm(capsys, "sample", "--rep", "random", "-c", "released:dino-backbone", "--weights-set", "model", "-o", tmp_path / "r")
    assert code == 2 and "released:dino-backbone has no weight set 'model'; it has: ema" in err


# --- the cpu preset ------------------------------------------------------------------------


def test_the_cpu_preset_brings_its_learning_rate_and_batch_unless_given(pictures, tmp_path, capsys):
    out = tmp_path / "cpu"
    code, _, err = rcdm(capsys, "train", pictures, *ENCODER, "--preset", "cpu", "--out", out, "--steps", 2, "--save-every", 2, "--sample-every", 100)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["lr"], config["batch_size"], config["preset"]) == (2e-3, 16, "cpu")
    assert config["ema_warmup"] is True
    meta = read_meta(_step_file(out))
    assert not meta.unet.learn_sigma and meta.diffusion.predict_xstart and meta.unet.num_res_blocks == 1
    out = tmp_path / "cpu-own"
    code, _, err = rcdm(capsys, "train", pictures, *ENCODER, "--preset", "cpu", "--out", out, "--steps", 1, "--lr", "5e-4", "-b", 2)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["lr"], config["batch_size"]) == (5e-4, 2)


# --- warm start ----------------------------------------------------------------------------


def test_init_takes_the_parents_unet_and_conditioning_only_trains_the_projection_alone(parent, pictures, tmp_path):
    parent_file = _step_file(parent)
    _, parent_weights = load_checkpoint(parent_file)  # its default set: the EMA
    out = tmp_path / "child"
    Trainer(_config(pictures, out, init=str(parent), conditioning_only=4, cond_drop=0.5), CPU).run()
    child_file = _step_file(out)
    _, raw = load_checkpoint(child_file, weights="model")
    changed = {k for k in raw if not torch.equal(raw[k], parent_weights[k])}
    assert changed == {"ssl_emb.weight", "ssl_emb.bias", "null_rep"}
    meta = read_meta(child_file)
    assert meta.source["parent"]["name"] == str(parent)
    assert meta.source["parent"]["sha256"] == file_sha256(parent_file)
    assert json.loads((out / "config.json").read_text())["parent"]["sha256"] == file_sha256(parent_file)


def test_embeddings_phase_then_every_layer(parent, pictures, tmp_path):
    _, parent_weights = load_checkpoint(_step_file(parent))
    out = tmp_path / "child"
    Trainer(_config(pictures, out, init=str(parent), conditioning_only=2, conditioning_layers="embeddings", steps=2, save_every=2), CPU).run()
    _, raw = load_checkpoint(_step_file(out), weights="model")
    changed = {k for k in raw if not torch.equal(raw[k], parent_weights[k])}
    assert changed and all(k.startswith(("ssl_emb.", "time_embed.")) or ".emb_layers." in k for k in changed)
    assert any(".emb_layers." in k for k in changed) and "null_rep" not in raw
    # after the phase every layer learns; a resumed run keeps its parent's record
    Trainer(_config(pictures, out, init=str(parent), conditioning_only=2, conditioning_layers="embeddings", steps=3, save_every=1), CPU, resume=True).run()
    _, raw = load_checkpoint(_step_file(out), weights="model")
    assert not torch.equal(raw["out.2.weight"], parent_weights["out.2.weight"])
    assert read_meta(_step_file(out)).source["parent"]["name"] == str(parent)


def test_init_from_another_width_starts_the_projection_afresh(parent, pictures, tmp_path):
    _, parent_weights = load_checkpoint(_step_file(parent))
    events = []

    class Events(Reporter):
        def event(self, message):
            events.append(message)

    out = tmp_path / "head"
    trainer = Trainer(_config(pictures, out, layer="head", init=str(parent), conditioning_only=4), CPU, reporter=Events())
    trainer.run()
    _, raw = load_checkpoint(_step_file(out), weights="model")
    assert raw["ssl_emb.weight"].shape == (128, 32) and parent_weights["ssl_emb.weight"].shape == (128, 128)
    assert torch.equal(raw["out.2.weight"], parent_weights["out.2.weight"])
    assert any("128-d representations and this run on 32-d: ssl_emb.weight start(s) afresh" in e for e in events)


def test_init_refusals(parent, pictures, tmp_path, capsys):
    code, _, err = rcdm(capsys, "train", pictures, *ENCODER, "--preset", "cpu", "--init", parent, "--out", tmp_path / "a")
    assert code == 2
    assert f"--init {parent} has another architecture than this run" in err
    assert "num_res_blocks 2 (this run: 1)" in err and "diffusion predict_xstart False (this run: True)" in err
    assert not (tmp_path / "a").exists()
    code, _, err = rcdm(capsys, "train", pictures, *ENCODER, "--preset", "tiny", "--init", "init:tiny", "--out", tmp_path / "b")
    assert code == 2 and "--init starts from trained weights" in err
    code, _, err = rcdm(capsys, "train", pictures, *ENCODER, "--preset", "tiny", "--conditioning-only", 10, "--out", tmp_path / "c")
    assert code == 2 and "--conditioning-only fits the conditioning of a trained model: give it with --init" in err
    code, _, err = rcdm(capsys, "train", pictures, *ENCODER, "--preset", "tiny", "--init", tmp_path / "nothing", "--out", tmp_path / "d")
    assert code == 2 and "no such checkpoint" in err
    code, _, err = rcdm(capsys, "train", pictures, *ENCODER, "--cond-drop", 1.5, "--out", tmp_path / "e")
    assert code == 2 and "--cond-drop must lie in [0, 1)" in err


# --- conditioning dropout and guidance ---------------------------------------------------------


def test_conditioning_dropout_learns_a_null_representation_and_guidance_samples_with_it(parent, pictures, capsys, tmp_path):
    meta = read_meta(_step_file(parent))
    assert meta.unet.null_representation
    _, raw = load_checkpoint(_step_file(parent), weights="model")
    assert raw["null_rep"].abs().sum() > 0  # it learned: it starts at zero
    image = sorted(pictures.glob("*.png"))[0]
    args = ["sample", image, "-c", parent, "-n", 2, "--sampler", "ddim", "--steps", "ddim3", "--json"]
    code, stdout, err = rcdm(capsys, *args, "-o", tmp_path / "plain")
    assert code == 0, err
    code, stdout_one, err = rcdm(capsys, *args, "--guidance", 1, "-o", tmp_path / "one")
    code, stdout_three, err = rcdm(capsys, *args, "--guidance", 3, "-o", tmp_path / "three")
    assert code == 0, err
    assert json.loads(stdout_three)["sampling"]["guidance"] == 3.0
    png = lambda folder: np.asarray(Image.open(folder / image.stem / "sample-000.png")).astype(int)  # noqa: E731
    assert np.array_equal(png(tmp_path / "plain"), png(tmp_path / "one"))  # W = 1 is the plain call
    assert np.abs(png(tmp_path / "three") - png(tmp_path / "plain")).max() > 0


def test_guidance_is_the_pushed_difference_of_two_calls_and_keeps_the_conditional_variance():
    config = PRESETS["tiny"].unet.with_rep_dim(8)
    import dataclasses

    unet = UNet(dataclasses.replace(config, null_representation=True))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    meta = CheckpointMeta(unet=unet.config, diffusion=PRESETS["tiny"].diffusion, source={"kind": "test"})
    model = RCDMModel(unet.eval(), meta, CPU)
    reps = torch.randn(2, 8, generator=gen)
    x, t = torch.randn(2, 3, 32, 32, generator=gen), torch.tensor([10, 500])
    with torch.no_grad():
        cond = unet(x, t, reps)
        uncond = unet(x, t, unet.null_representations(2))
        guided = model.denoiser(reps, 2.5)(x, t)
    torch.testing.assert_close(guided[:, :3], uncond[:, :3] + 2.5 * (cond[:, :3] - uncond[:, :3]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided[:, 3:], cond[:, 3:], atol=1e-5, rtol=1e-4)


def test_guidance_refusals(tiny_checkpoint, capsys, tmp_path):
    code, _, err = rcdm(capsys, "sample", "--rep", "random", "-c", tiny_checkpoint, "--guidance", 2, "-o", tmp_path / "a")
    assert code == 2 and "--guidance 2 needs a model trained with --cond-drop" in err
    for bad in ("-1", "nan", "inf"):
        code, _, err = rcdm(capsys, "sample", "--rep", "random", "-c", tiny_checkpoint, "--guidance", bad, "-o", tmp_path / "b")
        assert code == 2 and "--guidance must be a finite number >= 0" in err


@pytest.mark.parametrize("command", [["sample"], ["interpolate"], ["arith"], ["attack"], ["evaluate", "rank"], ["evaluate", "attributes"]])
def test_every_sampling_command_takes_guidance_and_the_weight_set(command, capsys):
    code, out, _ = rcdm(capsys, *command, "--help")
    assert code == 0 and "--guidance" in out and "--weights-set" in out


def test_dropped_samples_follow_the_rate_and_the_seed(pictures, tmp_path):
    trainer = Trainer(_config(pictures, tmp_path / "d", cond_drop=0.25), CPU)
    drawn = trainer._dropped(list(range(4000)))
    assert abs(float(drawn.float().mean()) - 0.25) < 0.02
    assert torch.equal(drawn, trainer._dropped(list(range(4000))))


def test_a_null_representation_needs_a_conditional_unet():
    with pytest.raises(UsageError, match="null representation needs"):
        PRESETS["tiny"].unet.__class__(**{**PRESETS["tiny"].unet.to_dict(), "null_representation": True})
