"""rcdm attack with a toy encoder (32x32 input, a 3-class classifier) and a tiny RCDM."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import make_tiny_state
from rcdm_cli.attacks.methods import available, build_attack, parse_size
from rcdm_cli.attacks.representation import representation_pgd
from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.store import save_checkpoint
from rcdm_cli.cli.app import run
from rcdm_cli.diffusion import PRESETS
from rcdm_cli.encoders import EncoderSpec, Preprocessing, create_encoder, get_registry, hookimpl, reset_registry
from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.probe import fit_probe

TOY_PRE = Preprocessing("toy", size=32, resize_to=36)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x, layer):
        feats = self.trunk(x).mean(dim=(2, 3))
        return feats if layer == "backbone" else self.fc(feats)


class _ToyPlugin:
    @staticmethod
    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(
            name="toy", description="toy", build=lambda r: _Toy(),
            layers={"backbone": (16, "pooled"), "logits": (3, "3 classes")}, preprocessing=TOY_PRE,
        ))
        register(EncoderSpec(
            name="toy-ssl", description="toy without a classifier", build=lambda r: _Toy(),
            layers={"backbone": (16, "pooled")}, preprocessing=TOY_PRE,
        ))


@pytest.fixture(autouse=True)
def toy():
    reset_registry()
    get_registry().add_plugin(_ToyPlugin, origin="tests")
    yield
    reset_registry()


@pytest.fixture
def setup(tmp_path):
    images = []
    rng = np.random.default_rng(0)
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        images.append(path)
    ckpts = {}
    for name in ("toy", "toy-ssl"):
        ckpt = tmp_path / f"{name}.safetensors"
        meta = CheckpointMeta(
            unet=PRESETS["tiny"].unet.with_rep_dim(16), diffusion=PRESETS["tiny"].diffusion,
            encoder=EncoderInfo(name=name, layer="backbone", rep_dim=16, preprocessing=TOY_PRE.to_dict()),
        )
        save_checkpoint(ckpt, {"model": make_tiny_state(16)}, meta)
        ckpts[name] = ckpt
    return images, ckpts, tmp_path


FAST = ["-n", "2", "--steps", "ddim2", "--sampler", "ddim"]


def rcdm(capsys, *args):
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "method, extra, ball",
    [
        ("fgsm", [], "Linf"),
        ("pgd", ["--attack-steps", "3"], "Linf"),
        ("pgdl2", ["--eps", "0.5", "--alpha", "0.1", "--attack-steps", "3"], "L2"),
        ("square", ["--param", "n_queries=20"], "Linf"),
        ("autoattack", ["--param", "version=rand", "--param", "n_classes=3"], "Linf"),
        ("cw", ["--param", "steps=5"], None),
        ("deepfool", ["--param", "steps=5"], None),
    ],
)
def test_documented_methods_run_and_stay_in_their_ball(capsys, setup, method, extra, ball):
    images, ckpts, tmp = setup
    code, out, err = rcdm(capsys, "attack", *images, "--method", method, *extra, "-c", ckpts["toy"], *FAST, "-o", tmp / method, "--json")
    assert code == 0, err
    manifest = json.loads(out)
    eps = parse_size(next((extra[i + 1] for i, a in enumerate(extra) if a == "--eps"), "8/255"))
    for entry in manifest["images"]:
        assert np.isfinite(entry["perturbation_norm"])
        if ball is not None:
            assert entry["norm"] == ball
            assert entry["perturbation_norm"] <= eps + 1e-5
        for key in ("clean", "adversarial", "perturbation", "grid"):
            assert Path(entry["files"][key]).is_file()
    # the summary is computed from the recorded predictions
    s, entries = manifest["summary"], manifest["images"]
    assert s["attack_success_rate"] == pytest.approx(np.mean([e["adversarial_label"] != e["clean_label"] for e in entries]))
    keep = sum(sum(p == e["clean_label"] for p in e["adversarial_sample_labels"]) for e in entries)
    assert s["adversarial_samples_keeping_clean_label"] == pytest.approx(keep / (2 * 2))
    assert s["mean_cosine_similarity"] == pytest.approx(np.mean([e["cosine_similarity"] for e in entries]))


def test_targeted_attack_reaches_its_class_on_a_weak_classifier(capsys, setup):
    images, ckpts, tmp = setup
    code, out, err = rcdm(
        capsys, "attack", images[0], "--method", "pgd", "--eps", "0.5", "--alpha", "0.05", "--attack-steps", "40",
        "--target-class", "2", "-c", ckpts["toy"], *FAST, "-o", tmp / "t", "--json",
    )
    assert code == 0, err
    entry = json.loads(out)["images"][0]
    assert entry["adversarial_label"] == 2 and entry["success"]


def test_representation_objective_moves_the_representation():
    enc = create_encoder("toy")
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def represent(z):
        return enc(z, "backbone")

    adv = representation_pgd(represent, x, eps=8 / 255, alpha=2 / 255, steps=10, generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    noise = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 8 / 255).clamp(0, 1)
    with torch.no_grad():
        moved = (represent(adv) - represent(x)).norm(dim=1)
        random_move = (represent(noise) - represent(x)).norm(dim=1)
    assert (moved > random_move).all()


def test_representation_objective_from_the_command_line_needs_no_classifier(capsys, setup):
    images, ckpts, tmp = setup
    code, out, err = rcdm(capsys, "attack", images[0], "--objective", "representation", "-c", ckpts["toy-ssl"], *FAST, "-o", tmp / "r", "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["classifier"] is None and manifest["summary"]["mean_cosine_similarity"] < 1.0


def test_ssl_encoder_needs_a_probe_for_the_classifier_objective(capsys, setup):
    images, ckpts, tmp = setup
    code, _, err = rcdm(capsys, "attack", images[0], "-c", ckpts["toy-ssl"], "-o", tmp / "x")
    assert code == 2 and "rcdm evaluate probe" in err and "--objective representation" in err
    # a probe on the representation is the classifier
    gen = torch.Generator().manual_seed(0)
    probe = fit_probe(torch.randn(20, 16, generator=gen), torch.arange(2).repeat(10), ["cat", "dog"])
    probe.info.update(encoder="toy-ssl", layer="backbone", preprocessing=TOY_PRE.to_dict())
    probe.save(tmp / "probe.safetensors")
    code, out, err = rcdm(capsys, "attack", images[0], "-c", ckpts["toy-ssl"], "--probe", tmp / "probe.safetensors", *FAST, "-o", tmp / "p", "--json")
    assert code == 0, err
    assert json.loads(out)["images"][0]["clean_class"] in ("cat", "dog")
    probe.info.update(encoder="dino")
    probe.save(tmp / "other.safetensors")
    code, _, err = rcdm(capsys, "attack", images[0], "-c", ckpts["toy-ssl"], "--probe", tmp / "other.safetensors", "-o", tmp / "q")
    assert code == 2 and "trained on dino representations" in err


def test_bad_requests(capsys, setup):
    images, ckpts, tmp = setup
    code, _, err = rcdm(capsys, "attack", images[0], "--method", "pgdx", "-c", ckpts["toy"], "-o", tmp / "x")
    assert code == 2 and "unknown attack 'pgdx'; choose one of:" in err and "autoattack" in err
    code, _, err = rcdm(capsys, "attack", images[0], "--eps", "8//255", "-c", ckpts["toy"], "-o", tmp / "x")
    assert code == 2 and "--eps '8//255' is not a number" in err
    code, _, err = rcdm(capsys, "attack", images[0], "--param", "bogus=1", "-c", ckpts["toy"], *FAST, "-o", tmp / "x")
    assert code == 2 and "pgd has no parameter 'bogus'; it takes: eps, alpha, steps, random_start" in err


def test_fractions_and_method_table():
    assert parse_size("8/255") == pytest.approx(8 / 255) and parse_size("0.5") == 0.5
    names = available()
    assert {"fgsm", "pgd", "pgdl2", "cw", "deepfool", "autoattack", "square"} <= set(names)
    attack, used = build_attack("square", nn.Linear(3, 2), eps=0.1, params={"n_queries": "7", "loss": "ce"})
    assert used["n_queries"] == 7 and used["loss"] == "ce" and used["eps"] == 0.1
