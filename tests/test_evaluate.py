"""rcdm evaluate: rank/MRR, invariance, linear probes and FID."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import make_tiny_state
from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.store import save_checkpoint
from rcdm_cli.cli.app import run
from rcdm_cli.diffusion import PRESETS
from rcdm_cli.encoders import EncoderSpec, Preprocessing, create_encoder, get_registry, hookimpl, reset_registry
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.evaluation.augmentations import AUGMENTATIONS
from rcdm_cli.evaluation.fid import fid
from rcdm_cli.evaluation.invariance import invariance
from rcdm_cli.evaluation.probe import Probe, accuracy, fit_probe
from rcdm_cli.evaluation.rank import ranks, summarize
from rcdm_cli.preprocessing import RCDM


def rcdm(capsys, *args):
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- rank ---------------------------------------------------------------------------------


def test_a_perfect_generator_ranks_first():
    cond = torch.randn(6, 16)
    samples = cond[:, None, :].repeat(1, 3, 1) * 2.0  # same direction
    s = summarize(ranks(samples, cond))
    assert s["mean_rank"] == 1 and s["mrr"] == 1 and s["top1"] == 1 and s["top5"] == 1


def test_a_generator_that_ignores_its_input_scores_chance():
    cond = torch.randn(5, 8)
    samples = torch.randn(1, 1, 8).repeat(5, 2, 1)  # the same image whatever the input
    s = summarize(ranks(samples, cond))
    assert s["mean_rank"] == pytest.approx((5 + 1) / 2)
    assert s["mrr"] == pytest.approx(sum(1 / i for i in range(1, 6)) / 5)
    assert s["mean_rank"] == s["chance_mean_rank"] and s["mrr"] == pytest.approx(s["chance_mrr"])


def test_ranks_by_hand():
    cond = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    samples = torch.tensor([
        [[0.9, 0.1]],   # closest to 0: rank 1
        [[1.0, 0.2]],   # for image 1: image 0 is closer -> rank 2
        [[0.1, 1.0]],   # for image 2: images 1 and 0 are closer -> rank 3
    ])
    assert ranks(samples, cond).flatten().tolist() == [1, 2, 3]
    assert ranks(samples, cond, "l2").flatten().tolist() == [1, 2, 3]


# --- invariance -------------------------------------------------------------------------------


class _FlipInvariant(nn.Module):
    """Features that are exactly invariant to horizontal flips (but not to shifts)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU())

    def forward(self, x, layer):
        def g(z):
            h = self.conv(z)
            return torch.cat([h.mean(dim=(2, 3)), h[..., : h.shape[2] // 2, :].mean(dim=(2, 3))], dim=1)

        return g(x) + g(x.flip(-1))


class _ToyPlugin:
    @staticmethod
    @hookimpl
    def register_encoders(register):
        register(
            EncoderSpec(
                name="flipinv", description="flip-invariant toy", build=lambda r: _FlipInvariant(),
                layers={"backbone": (64, "toy")}, preprocessing=Preprocessing("toy", size=64, resize_to=64),
            )
        )


@pytest.fixture
def toy_encoder():
    reset_registry()
    get_registry().add_plugin(_ToyPlugin, origin="tests")
    yield "flipinv"
    reset_registry()


def _textured(seed: int, size=(80, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[: size[1] // 3] //= 4  # a dark top band: a vertical shift moves it
    return Image.fromarray(arr)


def test_invariance_of_a_toy_encoder(toy_encoder):
    enc = create_encoder(toy_encoder)
    images = [_textured(i) for i in range(4)]
    table = invariance(images, enc, ["backbone"], ["hflip", "vshift", "rotate-90"])
    assert table["hflip"]["backbone"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert table["vshift"]["backbone"]["mean"] < 0.999
    assert set(table) == {"hflip", "vshift", "rotate-90"}


def test_augmentations_are_deterministic_and_keep_the_size():
    im = _textured(0)
    for name, aug in AUGMENTATIONS.items():
        a = aug.apply(im, np.random.default_rng(1))
        b = aug.apply(im, np.random.default_rng(1))
        assert np.array_equal(np.asarray(a), np.asarray(b)), name
        assert a.mode == "RGB"
        if name != "rotate-90":
            assert a.size == im.size, name


def test_invariance_command(capsys, toy_encoder, tmp_path):
    for i in range(3):
        _textured(i).save(tmp_path / f"{i}.png")
    results = tmp_path / "results.jsonl"
    code, out, err = rcdm(capsys, "evaluate", "invariance", tmp_path, "--encoder", toy_encoder, "-a", "hflip", "-a", "blur", "--results", results, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["similarity"]["hflip"]["backbone"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert record["trained_augmentations"] == ["hflip", "blur"]
    assert json.loads(results.read_text().splitlines()[-1])["metric"] == "invariance"
    code, _, err = rcdm(capsys, "evaluate", "invariance", tmp_path, "--encoder", toy_encoder, "-a", "sepia", "--no-results")
    assert code == 2 and "unknown augmentation 'sepia'" in err


# --- probe ---------------------------------------------------------------------------------------


def test_probe_separates_separable_data_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 10, generator=gen) * 3
    labels = torch.arange(3).repeat_interleave(40)
    feats = centers[labels] + torch.randn(120, 10, generator=gen)
    probe = fit_probe(feats, labels, ["a", "b", "c"])
    assert accuracy(probe, feats, labels)["top1"] > 0.97
    probe.info["layer"] = "backbone"
    probe.save(tmp_path / "p.safetensors")
    loaded = Probe.load(tmp_path / "p.safetensors")
    assert loaded.classes == ["a", "b", "c"] and loaded.info["layer"] == "backbone"
    assert torch.allclose(loaded.logits(feats), probe.logits(feats))
    with pytest.raises(UsageError, match="no such probe"):
        Probe.load(tmp_path / "missing.safetensors")


def _colour_folder(root: Path, n: int) -> Path:
    rng = np.random.default_rng(len(str(root)))
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(np.array(colour) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def test_probe_command(capsys, tmp_path):
    train = _colour_folder(tmp_path / "train", 6)
    val = _colour_folder(tmp_path / "val", 3)
    code, out, err = rcdm(capsys, "evaluate", "probe", train, val, "--encoder", "random", "-l", "layer3", "-o", tmp_path / "probes", "--no-results", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["classes"] == ["blue", "red"]
    assert record["layers"]["layer3"]["val"]["top1"] == 1.0
    probe = Probe.load(record["layers"]["layer3"]["probe"])
    assert probe.info["encoder"] == "random" and probe.info["layer"] == "layer3"
    code, _, err = rcdm(capsys, "evaluate", "probe", train, val, "--encoder", "random", "-l", "layer3", "-o", tmp_path / "probes", "--no-results")
    assert code == 2 and "already exist" in err


# --- rank command ------------------------------------------------------------------------------


def test_rank_command_records_results(capsys, tmp_path):
    ckpt = tmp_path / "m.safetensors"
    meta = CheckpointMeta(
        unet=PRESETS["tiny"].unet.with_rep_dim(1024), diffusion=PRESETS["tiny"].diffusion,
        encoder=EncoderInfo(name="random", layer="layer3", rep_dim=1024, preprocessing=RCDM.to_dict()),
    )
    save_checkpoint(ckpt, {"model": make_tiny_state(1024)}, meta)
    images = _colour_folder(tmp_path / "imgs", 2)
    results = tmp_path / "results.jsonl"
    args = ["evaluate", "rank", images, "-c", ckpt, "-n", 2, "--steps", "ddim2", "--sampler", "ddim", "--results", results, "--json"]
    code, out, err = rcdm(capsys, *args)
    assert code == 0, err
    record = json.loads(out)
    assert record["images"] and len(record["ranks"]) == 4 and len(record["ranks"][0]) == 2
    r = np.array(record["ranks"])
    assert record["mean_rank"] == pytest.approx(r.mean()) and record["mrr"] == pytest.approx((1 / r).mean())
    assert (record["encoder"], record["layer"]) == ("random", "layer3")
    assert rcdm(capsys, *args)[0] == 0
    assert len(results.read_text().splitlines()) == 2


# --- FID ---------------------------------------------------------------------------------------


def _two_folders(tmp_path):
    a = _colour_folder(tmp_path / "a", 2)
    b = _colour_folder(tmp_path / "b", 2)
    return a, b


def test_fid_without_the_extra_says_how_to_install(tmp_path, monkeypatch):
    a, b = _two_folders(tmp_path)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails
    with pytest.raises(UsageError, match=r"pip install 'rcdm\[fid\]'"):
        fid(a, b)


def test_fid_passes_folders_and_reports(tmp_path, monkeypatch):
    a, b = _two_folders(tmp_path)
    seen = {}

    def calculate_metrics(**kwargs):
        seen.update(kwargs)
        return {"frechet_inception_distance": 12.5, "precision": 0.5, "recall": 0.25, "f_score": 0.33}

    monkeypatch.setitem(sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=calculate_metrics))
    out = fid(a, b)
    assert out["fid"] == 12.5 and out["precision"] == 0.5 and out["samples"] == 4
    assert seen["input1"] == str(a) and seen["fid"] and seen["prc"]


def test_fid_offline_names_the_weights(tmp_path, monkeypatch):
    a, b = _two_folders(tmp_path)

    def calculate_metrics(**kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setitem(sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=calculate_metrics))
    with pytest.raises(RcdmError, match="weights-inception-2015-12-05"):
        fid(a, b)
