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

from helpers import make_tiny_state, rcdm
from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.store import save_checkpoint
from rcdm_cli.diffusion import PRESETS
from rcdm_cli.encoders import EncoderSpec, Preprocessing, create_encoder, get_registry, hookimpl, reset_registry
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.evaluation.augmentations import AUGMENTATIONS
from rcdm_cli.evaluation.fid import fid
from rcdm_cli.evaluation.invariance import invariance
from rcdm_cli.evaluation.probe import Probe, accuracy, fit_probe
from rcdm_cli.evaluation.rank import ranks, summarize


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
    assert ranks(samples, cond).expected_rank().flatten().tolist() == [1, 2, 3]
    assert ranks(samples, cond, "l2").expected_rank().flatten().tolist() == [1, 2, 3]


def test_a_collapsed_encoder_scores_exactly_chance():
    """Every representation equal: all N images tie, and the tie must not count in
    the sample's favour."""
    for n in (3, 7):
        cond = torch.ones(n, 4)
        samples = torch.ones(n, 2, 4) * 3.0
        for metric in ("cosine", "l2"):
            s = summarize(ranks(samples, cond, metric))
            assert s["mean_rank"] == pytest.approx((n + 1) / 2) and s["mean_rank"] == pytest.approx(s["chance_mean_rank"])
            assert s["mrr"] == pytest.approx(sum(1 / i for i in range(1, n + 1)) / n) and s["mrr"] == pytest.approx(s["chance_mrr"])
            assert s["top1"] == pytest.approx(1 / n) == pytest.approx(s["chance_top1"])
            assert s["top5"] == pytest.approx(min(5, n) / n) == pytest.approx(s["chance_top5"])
            assert s["tied_samples"] == 2 * n


def test_partial_ties_by_hand():
    # image 0's sample: image 1 is closer, image 2 ties with image 0, image 3 is farther
    cond = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    samples = torch.tensor([[[0.2, 1.0]], [[0.0, 1.0]], [[1.0, 0.0]], [[-1.0, 0.0]]])
    table = ranks(samples, cond)
    assert table.greater[0, 0] == 1 and table.ties[0, 0] == 1
    assert float(table.expected_rank()[0, 0]) == 2.5  # rank 2 or 3
    assert float(table.expected_reciprocal_rank()[0, 0]) == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert float(table.top_k(1)[0, 0]) == 0 and float(table.top_k(2)[0, 0]) == 0.5 and float(table.top_k(3)[0, 0]) == 1
    # image 2's sample ties with image 0: rank 1 or 2
    assert float(table.expected_rank()[2, 0]) == 1.5 and float(table.top_k(1)[2, 0]) == 0.5


# --- invariance -------------------------------------------------------------------------------


class _FlipInvariant(nn.Module):
    """Features that are exactly invariant to horizontal flips (but not to shifts);
    ``head`` is the first half of them."""

    calls = 0  # network calls, counted across instances

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU())

    def forward(self, x, layer):
        def g(z):
            h = self.conv(z)
            return torch.cat([h.mean(dim=(2, 3)), h[..., : h.shape[2] // 2, :].mean(dim=(2, 3))], dim=1)

        _FlipInvariant.calls += 1
        feats = g(x) + g(x.flip(-1))
        return feats[:, :32] if layer == "head" else feats


TOY_PRE = Preprocessing("toy", size=64, resize_to=64)


class _ToyPlugin:
    @staticmethod
    @hookimpl
    def register_encoders(register):
        register(
            EncoderSpec(
                name="flipinv", description="flip-invariant toy", build=lambda r: _FlipInvariant(),
                layers={"backbone": (64, "toy"), "head": (32, "toy")}, preprocessing=TOY_PRE,
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


def test_invariance_batches_give_the_same_numbers(toy_encoder):
    enc = create_encoder(toy_encoder)
    images = [_textured(i) for i in range(5)]
    _FlipInvariant.calls = 0
    whole = invariance(images, enc, ["backbone", "head"], ["vshift", "crop-0.5"], batch_size=8)
    assert _FlipInvariant.calls == 3 * 2  # clean + 2 views, one batch each, through 2 layers
    _FlipInvariant.calls = 0
    split = invariance(images, enc, ["backbone", "head"], ["vshift", "crop-0.5"], batch_size=2)
    assert _FlipInvariant.calls == 3 * 3 * 2  # 3 batches of at most 2 images
    for aug in whole:
        for layer in ("backbone", "head"):
            assert split[aug][layer]["mean"] == pytest.approx(whole[aug][layer]["mean"], abs=1e-6)
            assert split[aug][layer]["std"] == pytest.approx(whole[aug][layer]["std"], abs=1e-6)


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
    code, out, err = rcdm(
        capsys, "evaluate", "invariance", tmp_path, "--encoder", toy_encoder, "-l", "backbone", "-a", "hflip", "-a", "blur",
        "--batch-size", 2, "--results", results, "--json",
    )
    assert code == 0, err
    record = json.loads(out)
    assert record["similarity"]["hflip"]["backbone"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert record["trained_augmentations"] == ["hflip", "blur"]
    assert json.loads(results.read_text().splitlines()[-1])["metric"] == "invariance"
    code, _, err = rcdm(capsys, "evaluate", "invariance", tmp_path, "--encoder", toy_encoder, "-a", "sepia", "--no-results")
    assert code == 2 and "unknown augmentation 'sepia'" in err


def _toy_checkpoint(path: Path, rep_dim: int = 64) -> Path:
    meta = CheckpointMeta(
        unet=PRESETS["tiny"].unet.with_rep_dim(rep_dim), diffusion=PRESETS["tiny"].diffusion,
        encoder=EncoderInfo(name="flipinv", layer="backbone", rep_dim=rep_dim, preprocessing=TOY_PRE.to_dict()),
    )
    save_checkpoint(path, {"model": make_tiny_state(rep_dim)}, meta)
    return path


def test_invariance_grid_of_samples(capsys, toy_encoder, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        _textured(i).save(images / f"{i}.png")
    ckpt = _toy_checkpoint(tmp_path / "m.safetensors")
    augs = ["hflip", "vshift"]
    code, out, err = rcdm(
        capsys, "evaluate", "invariance", images, "--encoder", toy_encoder, "-l", "backbone", *sum((["-a", a] for a in augs), []),
        "-c", ckpt, "-n", 2, "--steps", "ddim2", "--sampler", "ddim", "--batch-size", 3, "-o", tmp_path / "grid",
        "--no-results", "--json",
    )
    assert code == 0, err
    record = json.loads(out)
    grid = Image.open(record["grid"])
    assert Path(record["grid"]) == tmp_path / "grid" / "augmentations.png"
    # one row per view (the original and each augmentation), the view then its 2 samples
    from rcdm_cli.imaging import make_grid

    side = PRESETS["tiny"].unet.image_size
    assert grid.size == make_grid([Image.new("RGB", (side, side))] * 9, ["x"] * 9, columns=3).size
    assert record["samples_per_augmentation"] == 2
    assert (record["sampling"]["sampler"], record["sampling"]["steps"], record["sampling"]["batch_size"]) == ("ddim", "ddim2", 3)
    assert record["sampling"]["seed"] == 0 and record["checkpoint"]["path"] == str(ckpt)
    code, _, err = rcdm(capsys, "evaluate", "invariance", images, "--encoder", toy_encoder, "-c", ckpt, "-o", tmp_path / "grid", "--no-results")
    assert code == 2 and "already exist" in err


def test_invariance_takes_its_encoder_from_the_checkpoint(capsys, toy_encoder, tmp_path):
    """As every other command: the representation the model is conditioned on (its
    encoder, layer and preprocessing), --layer measuring others; a contradicting
    --encoder is refused before any work."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        _textured(i).save(images / f"{i}.png")
    ckpt = _toy_checkpoint(tmp_path / "m.safetensors")
    fast = ["-n", 1, "--steps", "ddim2", "--sampler", "ddim", "--no-results", "--json", "--overwrite"]
    code, out, err = rcdm(capsys, "evaluate", "invariance", images, "-c", ckpt, "-a", "hflip", "-o", tmp_path / "grid", *fast)
    assert code == 0, err
    record = json.loads(out)
    assert (record["encoder"], record["layers"], record["preprocessing"]) == ("flipinv", ["backbone"], TOY_PRE.to_dict())
    assert record["similarity"]["hflip"]["backbone"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert record["grid_encoder"]["encoder"] == "flipinv" and Path(record["grid"]).is_file()
    assert err.strip().splitlines()[-1] == f"rcdm: grid: {tmp_path / 'grid' / 'augmentations.png'}"
    code, out, err = rcdm(capsys, "evaluate", "invariance", images, "-c", ckpt, "-l", "backbone", "-l", "head", "-a", "hflip",
                          "-o", tmp_path / "grid", *fast)
    assert code == 0, err
    assert json.loads(out)["layers"] == ["backbone", "head"]
    code, _, err = rcdm(capsys, "evaluate", "invariance", images, "-c", ckpt, "--encoder", "random", "-o", tmp_path / "g2", *fast)
    assert code == 2 and "contradicts" in err and not (tmp_path / "g2").exists()
    code, _, err = rcdm(capsys, "evaluate", "invariance", images, "--no-results")
    assert code == 2 and "give --encoder, or --checkpoint" in err


def test_invariance_takes_files_folders_globs_and_stdin(capsys, toy_encoder, tmp_path, monkeypatch):
    import io

    for i in range(4):
        _textured(i).save(tmp_path / f"{i}.png")
    common = ["--encoder", toy_encoder, "-l", "backbone", "-a", "hflip", "--no-results", "--json"]
    code, out, err = rcdm(capsys, "evaluate", "invariance", tmp_path / "0.png", tmp_path / "[12].png", *common)
    assert code == 0, err
    assert json.loads(out)["images"] == 3
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{tmp_path / '3.png'}\n{tmp_path / '0.png'}\n"))
    code, out, err = rcdm(capsys, "evaluate", "invariance", "-", *common)
    assert code == 0, err
    assert json.loads(out)["images"] == 2
    code, out, err = rcdm(capsys, "evaluate", "invariance", tmp_path, "--max-images", 1, *common[:-2], "--results", tmp_path / "r.jsonl")
    assert code == 0, err
    assert "hflip" in out and json.loads((tmp_path / "r.jsonl").read_text())["images"] == 1
    assert err.strip().splitlines()[-1] == f"rcdm: appended to {tmp_path / 'r.jsonl'}"


def test_invariance_reports_progress_over_images_and_views(toy_encoder):
    enc = create_encoder(toy_encoder)
    images = [_textured(i) for i in range(5)]
    seen = []
    invariance(images, enc, ["backbone"], ["hflip", "vshift"], batch_size=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(d, 15) for d in (2, 4, 5, 7, 9, 10, 12, 14, 15)]


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


def _colour_folder(root: Path, n: int, size: int = 40) -> Path:
    rng = np.random.default_rng(len(str(root)))
    for name, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
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
    assert Path(record["layers"]["layer3"]["probe"]).name == "random-layer3.safetensors"
    code, _, err = rcdm(capsys, "evaluate", "probe", train, val, "--encoder", "random", "-l", "layer3", "-o", tmp_path / "probes", "--no-results")
    assert code == 2 and "already exist" in err


def test_features_of_all_layers_in_one_pass_then_from_the_cache(toy_encoder, tmp_path, monkeypatch):
    import rcdm_cli.evaluation.features as features

    for i in range(5):
        _textured(i).save(tmp_path / f"{i}.png")
    paths = sorted(tmp_path.glob("*.png"))
    enc = create_encoder(toy_encoder)
    decoded = []
    real_load = features.load_image
    monkeypatch.setattr(features, "load_image", lambda p: decoded.append(p) or real_load(p))
    _FlipInvariant.calls = 0
    first = features.encode_file_layers(paths, enc, ["backbone", "head"], batch_size=2)
    assert first.cached == [] and len(decoded) == 5  # each image decoded once for both layers
    assert _FlipInvariant.calls == 3 * 2
    assert first.layers["backbone"].shape == (5, 64) and first.layers["head"].shape == (5, 32)
    assert torch.allclose(first.layers["head"], first.layers["backbone"][:, :32])
    decoded.clear()
    _FlipInvariant.calls = 0
    again = features.encode_file_layers(paths, enc, ["head", "backbone"], batch_size=4)
    assert again.cached == ["head", "backbone"] and decoded == [] and _FlipInvariant.calls == 0
    for layer in ("backbone", "head"):
        assert torch.equal(again.layers[layer], first.layers[layer])
    # a changed file is a new key: nothing stale is served
    _textured(9).save(paths[0])
    assert features.encode_file_layers(paths, enc, ["head"]).cached == []


def test_probe_command_reuses_cached_features(capsys, toy_encoder, tmp_path):
    train = _colour_folder(tmp_path / "train", 4, size=64)
    val = _colour_folder(tmp_path / "val", 2, size=64)
    args = ["evaluate", "probe", train, val, "--encoder", toy_encoder, "-l", "backbone", "-l", "head", "-o", tmp_path / "probes", "--no-results", "--json", "--overwrite"]
    code, out, err = rcdm(capsys, *args)
    assert code == 0, err
    first = json.loads(out)
    _FlipInvariant.calls = 0
    code, out, err = rcdm(capsys, *args)
    assert code == 0, err
    second = json.loads(out)
    assert _FlipInvariant.calls == 0 and "from the cache" in err
    for layer in ("backbone", "head"):
        assert not first["layers"][layer]["cached_features"] and second["layers"][layer]["cached_features"]
        assert second["layers"][layer]["val"] == first["layers"][layer]["val"]
        assert second["layers"][layer]["train"] == first["layers"][layer]["train"]


def test_probe_file_names_keep_the_weights_apart():
    from rcdm_cli.evaluation.probe import probe_stem

    assert probe_stem("dino", None) == "dino"
    assert probe_stem("dino@vitb8", None) == "dino-vitb8"
    assert probe_stem("timm:resnet50", None) == "timm-resnet50"
    assert probe_stem("dino", Path("/w/my run.pth")) == "dino-my-run"


# --- rank command and the table ------------------------------------------------------------------


@pytest.mark.slow
def test_rank_command_records_results_and_renders_the_table(capsys, toy_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the table on one line per row
    ckpt = _toy_checkpoint(tmp_path / "m.safetensors")
    images = _colour_folder(tmp_path / "imgs", 2, size=64)
    results = tmp_path / "results.jsonl"
    args = ["evaluate", "rank", images, "-c", ckpt, "-n", 2, "--steps", "ddim2", "--sampler", "ddim", "--results", results, "--json"]
    code, out, err = rcdm(capsys, *args)
    assert code == 0, err
    record = json.loads(out)
    assert record["images"] == 4 and len(record["image_paths"]) == 4
    assert len(record["ranks"]) == 4 and len(record["ranks"][0]) == 2
    r = np.array(record["ranks"])
    assert record["mean_rank"] == pytest.approx(r.mean())
    assert record["chance_top1"] == 0.25 and record["chance_top5"] == 1.0
    assert (record["encoder"], record["layer"]) == ("flipinv", "backbone")
    assert rcdm(capsys, *args)[0] == 0
    assert len(results.read_text().splitlines()) == 2
    # the table: one row per encoder/layer/checkpoint, the latest record winning
    with results.open("a") as f:
        f.write(json.dumps({"metric": "rank", "encoder": "dino", "layer": "head", "checkpoint": {"spec": "released:dino-head"},
                            "similarity": "cosine", "images": 1000, "samples_per_image": 4, "mean_rank": 1.0, "mrr": 0.99,
                            "top1": 0.98, "top5": 1.0, "chance_mean_rank": 500.5, "chance_mrr": 0.0075}) + "\n")
        f.write(json.dumps({"metric": "invariance", "encoder": "dino"}) + "\n")
    code, out, err = rcdm(capsys, "evaluate", "table", results, "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [(row["encoder"], row["layer"]) for row in rows] == [("flipinv", "backbone"), ("dino", "head")]
    assert rows[0]["mean_rank"] == pytest.approx(record["mean_rank"]) and rows[0]["images"] == 4
    assert rows[1]["mrr"] == 0.99 and rows[1]["checkpoint"] == "released:dino-head"
    code, out, err = rcdm(capsys, "evaluate", "table", results)
    assert code == 0, err
    assert "MRR" in out and "top-5" in out and "dino/head" in out and "0.990" in out
    assert "500.50" in out  # rows of different sizes: each with its chance
    code, out, err = rcdm(capsys, *args[:-1], "--no-results")
    assert code == 0, err
    assert "flipinv/backbone" in out and "chance: mean rank 2.50, MRR 0.521, top-1 0.250" in out
    code, _, err = rcdm(capsys, "evaluate", "table", results, "--metric", "probe")
    assert code == 2 and "holds no probe results" in err


def test_probe_table_has_a_column_per_layer(capsys, tmp_path):
    results = tmp_path / "r.jsonl"
    lines = [
        {"metric": "probe", "encoder": "simclr", "weights": "vissl", "classes": ["a", "b"], "layers": {"backbone": {"val": {"top1": 0.7}}}},
        {"metric": "probe", "encoder": "simclr", "weights": "vissl", "classes": ["a", "b"], "layers": {"head": {"val": {"top1": 0.5}}}},
    ]
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, out, err = rcdm(capsys, "evaluate", "table", results, "--metric", "probe", "--json")
    assert code == 0, err
    (row,) = json.loads(out)["rows"]
    assert row["val_top1"] == {"backbone": 0.7, "head": 0.5} and row["classes"] == 2
    results.write_text("{not json\n")
    code, _, err = rcdm(capsys, "evaluate", "table", results)
    assert code == 1 and "line 1: not a JSON record" in err


# --- FID ---------------------------------------------------------------------------------------


def _two_folders(tmp_path):
    a = _colour_folder(tmp_path / "a", 2)
    b = _colour_folder(tmp_path / "b", 2)
    return a, b


def _mixed_folder(root: Path) -> Path:
    """A reference folder like ImageNet's: sizes and modes differ."""
    root.mkdir(parents=True)
    Image.fromarray(np.full((50, 70, 3), 90, np.uint8)).save(root / "wide.jpg")
    Image.fromarray(np.full((90, 40), 200, np.uint8), mode="L").save(root / "tall_gray.png")
    Image.fromarray(np.full((40, 40, 3), 10, np.uint8)).save(root / "sub.png")
    return root


def _fake_fidelity(seen: dict, defaults: dict | None = None, result: dict | None = None):
    def calculate_metrics(**kwargs):
        seen.update(kwargs)
        # what the real library needs: one size per folder
        for key in ("input1", "input2"):
            seen[f"{key}_sizes"] = {Image.open(p).size for p in Path(kwargs[key]).rglob("*.*")}
        return result or {"frechet_inception_distance": 12.5, "precision": 0.5, "recall": 0.25, "f_score": 0.33}

    module = types.SimpleNamespace(calculate_metrics=calculate_metrics)
    if defaults is not None:
        module.defaults = types.SimpleNamespace(DEFAULTS=defaults)
    return module


def test_resize_and_crop_to_one_square_size(tmp_path):
    from rcdm_cli.evaluation.fid import prepare_folder, resize_and_crop

    wide = Image.fromarray(np.arange(60 * 100 * 3, dtype=np.uint32).reshape(60, 100, 3).astype(np.uint8))
    out = resize_and_crop(wide, 30)
    assert out.size == (30, 30) and out.mode == "RGB"
    assert resize_and_crop(Image.new("L", (10, 45)), 20).size == (20, 20)
    src = _mixed_folder(tmp_path / "src")
    seen = []
    count = prepare_folder(src, tmp_path / "dst", 32, lambda done, total: seen.append((done, total)))
    assert count == 3 and seen[-1] == (3, 3)
    files = sorted((tmp_path / "dst").iterdir())
    assert len(files) == 3 and {Image.open(f).size for f in files} == {(32, 32)}
    assert {Image.open(f).mode for f in files} == {"RGB"}


def test_fid_resizes_a_mixed_reference_folder(tmp_path, monkeypatch):
    samples = _colour_folder(tmp_path / "samples", 2)  # 40 x 40, as RCDM writes one size
    reference = _mixed_folder(tmp_path / "reference")
    seen = {}
    monkeypatch.setitem(sys.modules, "torch_fidelity", _fake_fidelity(seen))
    out = fid(samples, reference)
    assert out["size"] == 40 and out["reference"] == 3
    assert seen["input1"] == str(samples)  # already uniform: read in place
    assert seen["input2"] != str(reference) and seen["input2_sizes"] == {(40, 40)}
    assert not Path(seen["input2"]).exists()  # the temporary copy is gone
    # a version with its own resizing option gets it, and the original folders
    seen.clear()
    monkeypatch.setitem(sys.modules, "torch_fidelity", _fake_fidelity(seen, {"samples_resize_and_crop": 0}))
    fid(samples, reference, size=64)
    assert seen["samples_resize_and_crop"] == 64 and seen["input2"] == str(reference)


def test_fid_passes_folders_and_reports(tmp_path, monkeypatch):
    a, b = _two_folders(tmp_path)
    seen = {}
    monkeypatch.setitem(sys.modules, "torch_fidelity", _fake_fidelity(seen))
    out = fid(a, b)
    assert out["fid"] == 12.5 and "precision" not in out and out["samples"] == 4
    assert seen["input1"] == str(a) and seen["fid"] and seen["prc"] is False  # precision/recall is opt-in
    out = fid(a, b, precision_recall=True)
    assert out["precision"] == 0.5 and seen["prc"] is True


def test_fid_without_the_extra_says_how_to_install(tmp_path, monkeypatch):
    a, b = _two_folders(tmp_path)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails
    with pytest.raises(UsageError, match=r"pip install 'rcdm\[fid\]'"):
        fid(a, b)


def test_fid_command_checks_the_extra_before_any_work(capsys, tmp_path, monkeypatch):
    a, b = _two_folders(tmp_path)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    code, _, err = rcdm(capsys, "evaluate", "fid", a, b, "--no-results")
    assert code == 2 and "pip install 'rcdm[fid]'" in err and "computing Inception features" not in err


def test_fid_offline_names_the_weights_that_failed(tmp_path, monkeypatch):
    a, b = _two_folders(tmp_path)

    def load_inception():
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    def load_vgg16():
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    for loader, expected, other in ((load_inception, "weights-inception-2015-12-05", "vgg16"), (load_vgg16, "vgg16-397923af", "inception")):
        def calculate_metrics(**kwargs):
            loader()

        monkeypatch.setitem(sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=calculate_metrics))
        with pytest.raises(RcdmError, match=expected) as info:
            fid(a, b, precision_recall=True)
        assert other not in str(info.value)


def test_fid_failure_is_one_clear_line(tmp_path, monkeypatch):
    a, b = _two_folders(tmp_path)

    def calculate_metrics(**kwargs):
        raise RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nTraceback ...")

    monkeypatch.setitem(sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=calculate_metrics))
    with pytest.raises(RcdmError, match=r"^FID failed: Caught RuntimeError in DataLoader worker process 0\.$"):
        fid(a, b)
