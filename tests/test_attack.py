"""rcdm attack with a toy encoder (32x32 input, a 3-class classifier) and a tiny RCDM."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import make_tiny_state, rcdm
from rcdm_cli.attacks.experiment import build_classifier, quantize, summarize
from rcdm_cli.attacks.methods import available, build_attack, parse_number, parse_size, plan_attack
from rcdm_cli.attacks.representation import representation_pgd
from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.store import save_checkpoint
from rcdm_cli.diffusion import PRESETS
from rcdm_cli.encoders import EncoderSpec, Preprocessing, create_encoder, get_registry, hookimpl, reset_registry
from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.probe import fit_probe
from rcdm_cli.tensorfile import load_tensor

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


def _png(path) -> torch.Tensor:
    """An image file as the [0, 1] tensor it holds, with no resizing."""
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0).permute(2, 0, 1)


@pytest.mark.parametrize(
    "method, extra, budget",
    [
        ("fgsm", [], ("Linf", 8 / 255)),
        ("pgd", ["--attack-steps", "3"], ("Linf", 8 / 255)),
        ("pgdl2", ["--attack-steps", "3"], ("L2", 1.0)),  # torchattacks' own L2 budget, not 8/255
        ("square", ["--param", "n_queries=20"], ("Linf", 8 / 255)),
        ("autoattack", ["--param", "version=rand"], ("Linf", 8 / 255)),
        ("cw", ["--param", "steps=5", "--param", "c=0.5"], None),
        ("deepfool", ["--param", "steps=5"], None),
    ],
)
def test_documented_methods_run_and_stay_in_their_ball(capsys, setup, method, extra, budget):
    images, ckpts, tmp = setup
    code, out, err = rcdm(capsys, "attack", *images, "--method", method, *extra, "-c", ckpts["toy"], *FAST, "-o", tmp / method, "--json")
    assert code == 0, err
    manifest = json.loads(out)
    if budget is None:
        assert manifest["budget"] is None
    else:
        assert (manifest["budget"]["norm"], manifest["budget"]["eps"]) == pytest.approx(budget)
    classifier = build_classifier(create_encoder("toy"), None)
    for entry in manifest["images"]:
        clean, adv = _png(entry["files"]["clean"]), _png(entry["files"]["adversarial"])
        delta = (adv - clean).flatten()
        # both norms are recorded, and they are the saved files' own
        assert entry["perturbation_linf"] == pytest.approx(float(delta.abs().max()), abs=1e-6)
        assert entry["perturbation_l2"] == pytest.approx(float(delta.norm()), abs=1e-5)
        if budget is not None:
            limit = budget[1] if budget[0] == "L2" else np.floor(budget[1] * 255 + 1e-6) / 255
            value = float(delta.norm()) if budget[0] == "L2" else float(delta.abs().max())
            assert value <= limit + 1e-6
        # the predictions are those of exactly what is saved
        assert classifier.predict(clean[None]).item() == entry["clean_label"]
        assert classifier.predict(adv[None]).item() == entry["adversarial_label"]
        saved = load_tensor(entry["files"]["tensors"], preferred=("adversarial",))
        assert torch.equal(saved, adv)
        for key in ("clean", "adversarial", "perturbation", "grid"):
            assert Path(entry["files"][key]).is_file()
    # two images: an overview beside their grids, two rows (clean, adversarial) of input and 2 samples each
    overview = Image.open(manifest["overview"])
    assert overview.size == (3 * (96 + 2) + 2, 4 * (96 + 14 + 2) + 2)
    # the summary is computed from the recorded predictions
    s, entries = manifest["summary"], manifest["images"]
    assert s["attack_success_rate"] == pytest.approx(np.mean([e["adversarial_label"] != e["clean_label"] for e in entries]))
    keep = sum(sum(p == e["clean_label"] for p in e["adversarial_sample_labels"]) for e in entries)
    take = sum(sum(p == e["adversarial_label"] for p in e["adversarial_sample_labels"]) for e in entries if e["success"])
    clean_ok = sum(sum(p == e["clean_label"] for p in e["clean_sample_labels"]) for e in entries)
    assert s["adversarial_samples_keeping_clean_label"] == pytest.approx(keep / (2 * 2))
    assert s["adversarial_samples_taking_adversarial_label"] == pytest.approx(take / (2 * 2))
    assert s["clean_samples_with_clean_label"] == pytest.approx(clean_ok / (2 * 2))
    assert s["mean_cosine_similarity"] == pytest.approx(np.mean([e["cosine_similarity"] for e in entries]))
    undone = [e for e in entries if e["unquantized_adversarial_label"] != e["clean_label"] == e["adversarial_label"]]
    assert s["images_where_rounding_undid_the_attack"] == len(undone)
    assert ("rounding the adversarial image to 8 bits undid the attack" in err) == bool(undone)


def test_summary_shares_by_hand():
    entries = [
        # attacked: of 4 adversarial samples 1 keeps the clean label 0, 2 take the adversarial label 2
        {"clean_label": 0, "adversarial_label": 2, "unquantized_adversarial_label": 2, "success": True, "adversarial_sample_labels": [0, 2, 2, 1], "clean_sample_labels": [0, 0, 1, 0]},
        # rounding to 8 bits undid the attack: its samples cannot take an adversarial label
        {"clean_label": 1, "adversarial_label": 1, "unquantized_adversarial_label": 0, "success": False, "adversarial_sample_labels": [1, 1, 0, 1], "clean_sample_labels": [1, 2, 2, 2]},
    ]
    norms = {"linf": torch.tensor([0.5, 1.5]), "l2": torch.tensor([1.0, 3.0])}
    s = summarize(entries, torch.tensor([0.25, 0.75]), norms, 4, True)
    assert s["attack_success_rate"] == 0.5
    assert s["adversarial_samples_keeping_clean_label"] == 4 / 8
    assert s["adversarial_samples_taking_adversarial_label"] == 2 / 8
    assert s["clean_samples_with_clean_label"] == 4 / 8
    assert s["mean_cosine_similarity"] == 0.5 and s["mean_perturbation_l2"] == 2.0
    assert s["images_where_rounding_undid_the_attack"] == 1


def test_quantised_adversarial_images_stay_in_the_budget():
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (3, 3, 16, 16), generator=gen).float() / 255
    # a float perturbation at the edge of the L-inf ball: plain rounding reaches 9/255
    raw = (clean + (torch.rand(clean.shape, generator=gen) * 2 - 1).sign() * (8.6 / 255)).clamp(0, 1)
    assert ((raw * 255).round() - clean * 255).abs().max() == 9
    q = quantize(clean, raw, {"norm": "Linf", "eps": 8.6 / 255})
    assert torch.equal(q, (q * 255).round() / 255)  # on the 8-bit grid
    assert ((q - clean) * 255).round().abs().max() == 8
    # L2: the rounded perturbation stays in the ball and keeps most of its size
    direction = torch.randn(clean.shape, generator=gen)
    raw = (clean + direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.5).clamp(0, 1)
    q = quantize(clean, raw, {"norm": "L2", "eps": 0.5})
    norms = (q - clean).flatten(1).norm(dim=1)
    assert (norms <= 0.5 + 1e-6).all() and (norms > 0.3).all()
    # no budget: rounding only
    assert torch.equal(quantize(clean, raw, None), (raw * 255).round() / 255)


def test_method_defaults_are_not_overridden():
    pgdl2 = plan_attack("pgdl2")
    assert pgdl2.used["eps"] == 1.0 and pgdl2.used["alpha"] == 0.2 and pgdl2.budget == {"norm": "L2", "eps": 1.0}
    assert plan_attack("cw").used["steps"] == 50 and plan_attack("deepfool").used["steps"] == 50
    assert plan_attack("pgd").used["eps"] == pytest.approx(8 / 255)
    assert plan_attack("pgd", eps=0.1).used["eps"] == 0.1


def test_parameters_read_by_their_own_form():
    assert parse_number("5", "x") == 5 and isinstance(parse_number("5", "x"), int)
    assert parse_number("0.5", "x") == 0.5 and parse_number("8/255", "x") == pytest.approx(8 / 255)
    cw = plan_attack("cw", params={"c": "0.5", "kappa": "0.1"})  # int defaults, float values
    assert cw.used["c"] == 0.5 and cw.used["kappa"] == 0.1
    assert plan_attack("jitter", params={"scale": "2.5"}).used["scale"] == 2.5
    assert plan_attack("tifgsm", params={"nsig": "1/2"}).used["nsig"] == 0.5
    assert plan_attack("pgd", params={"eps": "4/255"}).used["eps"] == pytest.approx(4 / 255)
    with pytest.raises(UsageError, match="--param c 'lots' is not a number"):
        plan_attack("cw", params={"c": "lots"})


def test_norm_is_mapped_passed_or_refused():
    assert plan_attack("pgd", norm="L2").method == "pgdl2"
    assert plan_attack("pgdl2", norm="Linf").method == "pgd"
    assert plan_attack("square", norm="L2").used["norm"] == "L2"
    assert plan_attack("fgsm", norm="Linf").method == "fgsm"
    with pytest.raises(UsageError, match="fgsm attacks in an Linf ball; for an L2 budget choose one of: .*pgdl2"):
        plan_attack("fgsm", norm="L2")
    with pytest.raises(UsageError, match="cw has no budget ball"):
        plan_attack("cw", norm="L2")
    with pytest.raises(UsageError, match="--norm L2 contradicts --param norm=Linf"):
        plan_attack("square", norm="L2", params={"norm": "Linf"})
    with pytest.raises(UsageError, match="--norm must be one of Linf, L2"):
        plan_attack("pgd", norm="L1")


def test_norm_from_the_command_line(capsys, setup):
    images, ckpts, tmp = setup
    code, out, err = rcdm(capsys, "attack", images[0], "--norm", "L2", "--attack-steps", "2", "-c", ckpts["toy"], *FAST, "-o", tmp / "l2", "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["method"] == "pgdl2" and manifest["budget"] == {"norm": "L2", "eps": 1.0}
    code, _, err = rcdm(capsys, "attack", images[0], "--method", "fgsm", "--norm", "L2", "-c", ckpts["toy"], "-o", tmp / "x")
    assert code == 2 and "for an L2 budget choose one of" in err
    code, out, err = rcdm(
        capsys, "attack", images[0], "--objective", "representation", "--norm", "L2", "--attack-steps", "2",
        "-c", ckpts["toy-ssl"], *FAST, "-o", tmp / "rl2", "--json",
    )
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["budget"] == {"norm": "L2", "eps": 1.0}
    assert manifest["images"][0]["perturbation_l2"] <= 1.0 + 1e-6


def test_user_mistakes_are_usage_errors(capsys, setup):
    images, ckpts, tmp = setup
    base = ["attack", images[0], "-c", ckpts["toy"], *FAST]
    cases = [
        (["--method", "deepfool", "--target-class", "1"], "deepfool has no targeted mode, so --target-class does not apply; attacks that can be targeted:"),
        (["--method", "square", "--param", "loss=bogus", "--param", "n_queries=5"], "square rejected its parameters (loss='bogus', n_queries=5): AssertionError"),
        (["--eps", "-0.1"], "pgd's eps must be positive, got -0.1"),
        (["--alpha", "0"], "pgd's alpha must be positive"),
        (["--method", "cw", "--eps", "0.1"], "--eps does not apply to cw; it takes: c, kappa, steps, lr"),
        (["--eps", "0.1", "--param", "eps=0.2"], "--eps and --param eps both set"),
        (["--target-class", "7"], "--target-class must be in 0..2"),
        (["--objective", "representation", "--param", "random_start=false"], "--param passes parameters to torchattacks"),
        (["--method", "autoattack", "--param", "version=bogus"], "autoattack rejected its parameters (version='bogus'): Not valid version"),
    ]
    for extra, message in cases:
        code, _, err = rcdm(capsys, *base, *extra, "-o", tmp / "x")
        assert code == 2 and message in err, (extra, err)
        assert "internal error" not in err
    assert not (tmp / "x").exists()  # nothing written


def test_objective_is_checked_before_anything_loads(capsys, tmp_path):
    code, _, err = rcdm(capsys, "attack", tmp_path / "missing.png", "--objective", "foo", "-c", tmp_path / "missing.safetensors")
    assert code == 2 and "--objective must be one of classifier, representation, got 'foo'" in err


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


@pytest.mark.slow
def test_representation_objective_needs_no_classifier_and_does_not_depend_on_the_batch(capsys, setup):
    images, ckpts, tmp = setup
    outs = []
    for batch in (1, 2):
        code, out, err = rcdm(
            capsys, "attack", *images, "--objective", "representation", "--attack-steps", "3", "--batch-size", batch,
            "-c", ckpts["toy-ssl"], *FAST, "-o", tmp / f"r{batch}", "--json",
        )
        assert code == 0, err
        outs.append(json.loads(out))
    manifest = outs[0]
    assert manifest["classifier"] is None and manifest["summary"]["mean_cosine_similarity"] < 1.0
    assert manifest["budget"]["norm"] == "Linf" and manifest["attack_parameters"]["steps"] == 3
    for a, b in zip(outs[0]["images"], outs[1]["images"]):
        assert np.array_equal(np.asarray(Image.open(a["files"]["adversarial"])), np.asarray(Image.open(b["files"]["adversarial"])))


def test_ssl_encoder_needs_a_probe_for_the_classifier_objective(capsys, setup):
    images, ckpts, tmp = setup
    code, _, err = rcdm(capsys, "attack", images[0], "-c", ckpts["toy-ssl"], "-o", tmp / "x")
    assert code == 2 and "rcdm evaluate probe" in err and "--objective representation" in err
    # a probe on the representation is the classifier
    gen = torch.Generator().manual_seed(0)
    probe = fit_probe(torch.randn(20, 16, generator=gen), torch.arange(2).repeat(10), ["cat", "dog"])
    probe.info.update(encoder="toy-ssl", weights=None, layer="backbone", preprocessing=TOY_PRE.to_dict())
    probe.save(tmp / "probe.safetensors")
    code, out, err = rcdm(capsys, "attack", images[0], "-c", ckpts["toy-ssl"], "--probe", tmp / "probe.safetensors", *FAST, "-o", tmp / "p", "--json")
    assert code == 0, err
    assert json.loads(out)["images"][0]["clean_class"] in ("cat", "dog")
    probe.info.update(encoder="dino")
    probe.save(tmp / "other.safetensors")
    code, _, err = rcdm(capsys, "attack", images[0], "-c", ckpts["toy-ssl"], "--probe", tmp / "other.safetensors", "-o", tmp / "q")
    assert code == 2 and "trained on dino representations" in err
    # the same encoder with other weights is another representation
    probe.info.update(encoder="toy-ssl", weights="other")
    probe.save(tmp / "weights.safetensors")
    code, _, err = rcdm(capsys, "attack", images[0], "-c", ckpts["toy-ssl"], "--probe", tmp / "weights.safetensors", "-o", tmp / "w")
    assert code == 2 and "trained on toy-ssl with weights 'other'" in err


def test_bad_requests(capsys, setup):
    images, ckpts, tmp = setup
    code, _, err = rcdm(capsys, "attack", images[0], "--method", "pgdx", "-c", ckpts["toy"], "-o", tmp / "x")
    assert code == 2 and "unknown attack 'pgdx'; choose one of:" in err and "autoattack" in err
    code, _, err = rcdm(capsys, "attack", images[0], "--eps", "8//255", "-c", ckpts["toy"], "-o", tmp / "x")
    assert code == 2 and "--eps '8//255' is not a number" in err
    code, _, err = rcdm(capsys, "attack", images[0], "--param", "bogus=1", "-c", ckpts["toy"], *FAST, "-o", tmp / "x")
    assert code == 2 and "pgd has no parameter 'bogus'; it takes: eps, alpha, steps, random_start" in err


def test_summary_table_on_stdout(capsys, setup):
    images, ckpts, tmp = setup
    code, out, err = rcdm(capsys, "attack", images[0], "--method", "fgsm", "-c", ckpts["toy"], *FAST, "-o", tmp / "table")
    assert code == 0, err
    manifest = json.loads((tmp / "table" / "manifest.json").read_text())
    s = manifest["summary"]
    assert "attack success rate" in out and f"{s['attack_success_rate']:.1%}" in out
    assert "adversarial samples taking the adversarial label" in out
    assert "clean samples with the clean label" in out and f"{s['mean_cosine_similarity']:.4f}" in out



def test_the_attack_flow_runs_without_the_command_line(capsys, setup):
    """rcdm_cli.attacks.job is the command's flow: called directly, with its default
    callbacks, it writes the manifest the command writes."""
    from rcdm_cli.attacks.job import AttackJob, AttackRequest
    from rcdm_cli.pipeline.runner import RCDMRun
    from rcdm_cli.pipeline.sampling import SamplingOptions

    images, ckpts, tmp = setup
    code, out, err = rcdm(capsys, "attack", *images, "--method", "fgsm", "-c", ckpts["toy"], *FAST, "-o", tmp / "cli", "--json")
    assert code == 0, err
    by_command = json.loads(out)
    run = RCDMRun.prepare(checkpoint=str(ckpts["toy"]))
    options = run.resolve(SamplingOptions(sampler="ddim", steps="ddim2"))
    request = AttackRequest.parse(
        objective="classifier", method="fgsm", eps=None, alpha=None, steps=None, norm=None, target_class=None,
        params=[], batch_size=options.batch_size,
    )
    calls = run.check(None, 2, options).num_timesteps
    done = AttackJob.prepare(request, run, options, calls, list(images), n=2, out=tmp / "lib", overwrite=False).execute()
    assert done.classified and done.representation == "toy/backbone"
    assert done.summary == by_command["summary"] and done.manifest["seeds"] == by_command["seeds"]
    assert json.loads((tmp / "lib" / "manifest.json").read_text())["summary"] == by_command["summary"]
    assert (tmp / "lib" / "overview.png").exists()


def test_fractions_and_method_table():
    assert parse_size("8/255") == pytest.approx(8 / 255) and parse_size("0.5") == 0.5
    names = available()
    assert {"fgsm", "pgd", "pgdl2", "cw", "deepfool", "autoattack", "square"} <= set(names)
    attack, used = build_attack("square", nn.Linear(3, 2), eps=0.1, params={"n_queries": "7", "loss": "ce"})
    assert used["n_queries"] == 7 and used["loss"] == "ce" and used["eps"] == 0.1


def test_cw_attacks_a_classifier_whose_logits_are_all_negative():
    """torchattacks' CW margin sees a 0 for the label when every other logit is
    negative and stops at once; the toy classifier's logits are all negative."""
    classifier = build_classifier(create_encoder("toy"), None)
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0)).float() / 255
    with torch.no_grad():
        assert (classifier.model(x) < 0).all()
    labels = classifier.predict(x)
    spec = plan_attack("cw", n_classes=3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        adv = spec.run(spec.build(classifier.model), x, labels)
    assert (classifier.predict(adv) != labels).any()
    assert (adv - x).flatten(1).norm(dim=1).max() > 0
