"""Sampling from images, interpolation and arithmetic, with the `random` encoder and
tiny checkpoints whose metadata names it."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import make_tiny_state, rcdm
from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.resolve import resolve_checkpoint
from rcdm_cli.checkpoint.store import save_checkpoint
from rcdm_cli.diffusion import PRESETS
from rcdm_cli.encoders import create_encoder
from rcdm_cli.pipeline import expression as expr
from rcdm_cli.pipeline.model import RCDMModel
from rcdm_cli.pipeline.representations import (
    interpolate,
    lerp,
    remove_shared,
    rescale_to,
    shared_dimensions,
    slerp,
    transfer_attributes,
)
from rcdm_cli.pipeline.sampling import SamplingOptions, sample_representations
from rcdm_cli.preprocessing import RCDM
from rcdm_cli.errors import UsageError

FAST = ["--steps", "ddim3", "--sampler", "ddim"]


def _ckpt(path: Path, encoder: EncoderInfo | None, rep_dim: int = 2048) -> Path:
    meta = CheckpointMeta(unet=PRESETS["tiny"].unet.with_rep_dim(rep_dim), diffusion=PRESETS["tiny"].diffusion, encoder=encoder)
    save_checkpoint(path, {"model": make_tiny_state(rep_dim)}, meta)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(64, 48), (40, 40), (50, 70)]):
        img = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        img[..., i] = 200  # distinct colours so representations differ
        img += rng.integers(0, 40, img.shape, dtype=np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory) -> Path:
    """A tiny model trained (in its metadata) on random/backbone with RCDM scaling."""
    info = EncoderInfo(name="random", layer="backbone", rep_dim=2048, preprocessing=RCDM.to_dict())
    return _ckpt(tmp_path_factory.mktemp("c") / "random.safetensors", info)


def test_sample_from_images_uses_the_metadata_encoder_and_preprocessing(capsys, images, random_ckpt, tmp_path):
    code, out, err = rcdm(capsys, "sample", images[0], images[1], "-c", random_ckpt, "-n", 2, *FAST, "-o", tmp_path / "s", "--json", "--save-tensors")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["inputs"] == [str(images[0]), str(images[1])]
    enc = manifest["encoder"]
    assert (enc["encoder"], enc["layer"], enc["rep_dim"]) == ("random", "backbone", 2048)
    assert enc["preprocessing"]["name"] == "rcdm" and enc["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert [o["name"] for o in manifest["outputs"]] == ["img0", "img1"]
    grid = Image.open(manifest["outputs"][0]["grid"])
    assert grid.width == 3 * (96 + 2) + 2  # the input, then 2 samples
    # the representations are what the encoder gives with the recorded preprocessing
    reps = load_file(str(tmp_path / "s" / "samples.safetensors"))["reps"]
    encoder = create_encoder("random", preprocessing=RCDM)
    expected = encoder.encode([Image.open(p).convert("RGB") for p in images[:2]], "backbone")
    assert torch.allclose(reps, expected, atol=1e-5)


@pytest.mark.slow
def test_folder_glob_and_stdin_inputs(capsys, images, random_ckpt, tmp_path, monkeypatch):
    folder = images[0].parent
    code, out, err = rcdm(capsys, "sample", folder, "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "a", "--json")
    assert code == 0, err
    assert len(json.loads(out)["outputs"]) == 3
    code, out, err = rcdm(capsys, "sample", str(folder / "img[01].png"), "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "b", "--json")
    assert code == 0 and [o["name"] for o in json.loads(out)["outputs"]] == ["img0", "img1"]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{images[2]}\n\n{images[0]}\n"))
    code, out, err = rcdm(capsys, "sample", "-", "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "c", "--json")
    assert code == 0, err
    assert json.loads(out)["inputs"] == [str(images[2]), str(images[0])]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "layer3"], "trained on the 'backbone' layer of random; --layer layer3 contradicts it"),
        (["--encoder", "supervised"], "trained on random/backbone representations; --encoder supervised contradicts it"),
        (["--preprocessing", "native"], "--preprocessing native contradicts it"),
        (["--rep", "random"], "not both"),
    ],
)
def test_contradictions_with_the_checkpoint_fail_before_any_work(capsys, images, random_ckpt, tmp_path, extra, message):
    code, out, err = rcdm(capsys, "sample", images[0], "-c", random_ckpt, *extra, "-o", tmp_path / "x")
    assert code == 2 and message in err
    assert not (tmp_path / "x").exists()
    assert "encoding" not in err and "loading" not in err


def test_model_without_encoder_metadata_needs_an_encoder_of_the_right_width(capsys, images, tmp_path):
    bare = _ckpt(tmp_path / "bare.safetensors", None, rep_dim=1024)
    code, _, err = rcdm(capsys, "sample", images[0], "-c", bare, "-o", tmp_path / "x")
    assert code == 2 and "names no encoder" in err
    code, _, err = rcdm(capsys, "sample", images[0], "-c", bare, "--encoder", "random", "-o", tmp_path / "x")
    assert code == 2 and "random/backbone gives 2048-d representations but the model is conditioned on 1024-d" in err
    code, _, err = rcdm(capsys, "sample", images[0], "-c", bare, "--encoder", "random", "--layer", "layer3", "-n", 1, *FAST, "-o", tmp_path / "ok")
    assert code == 0, err


def test_init_model_takes_its_width_from_the_encoder(capsys, images, tmp_path):
    code, out, err = rcdm(
        capsys, "sample", images[0], "-c", "init:tiny", "--encoder", "random", "--layer", "layer3", "-n", 1, *FAST, "-o", tmp_path / "s", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["encoder"]["rep_dim"] == 1024


def test_default_checkpoint_comes_from_encoder_and_layer(capsys, images, tmp_path, monkeypatch):
    monkeypatch.setenv("RCDM_OFFLINE", "1")
    code, _, err = rcdm(capsys, "sample", images[0], "--encoder", "random", "-o", tmp_path / "x")
    assert code == 2 and "no released RCDM model for random/backbone" in err
    code, _, err = rcdm(capsys, "sample", images[0], "-o", tmp_path / "x")
    assert code == 2 and "give --checkpoint, or --encoder and --layer" in err


def test_missing_and_corrupt_images(capsys, images, random_ckpt, tmp_path):
    code, _, err = rcdm(capsys, "sample", tmp_path / "nope.jpg", "-c", random_ckpt, "-o", tmp_path / "x")
    assert code == 2 and "no such image" in err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    code, _, err = rcdm(capsys, "sample", images[0], bad, "-c", random_ckpt, "-o", tmp_path / "x")
    assert code == 1 and "cannot read image" in err and not (tmp_path / "x").exists()


# --- interpolation -----------------------------------------------------------------------


def test_lerp_and_slerp_end_exactly_at_the_inputs():
    a, b = torch.randn(16), torch.randn(16)
    for fn in (lerp, slerp):
        path = fn(a, b, torch.linspace(0, 1, 5, dtype=torch.float64))
        assert torch.allclose(path[0], a, atol=1e-6) and torch.allclose(path[-1], b, atol=1e-6)
    mid = slerp(a, b, torch.tensor([0.5], dtype=torch.float64))[0]
    assert torch.isclose(mid.norm(), (a.norm() + b.norm()) / 2, atol=1e-5)
    assert lerp(a, b, torch.tensor([0.5], dtype=torch.float64))[0].norm() < mid.norm()
    with pytest.raises(UsageError, match="at least 2"):
        interpolate(a, b, 1)


def test_interpolate_command_writes_the_whole_path(capsys, images, random_ckpt, tmp_path):
    code, out, err = rcdm(
        capsys, "interpolate", images[0], images[1], "-c", random_ckpt, "--frames", 4, "-n", 2, *FAST,
        "--animation", "gif", "-o", tmp_path / "i", "--json", "--mode", "slerp",
    )
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["positions"] == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    assert len(manifest["outputs"]["frames"]) == 2 and len(manifest["outputs"]["frames"][0]) == 4
    strip = Image.open(manifest["outputs"]["strip"])
    assert strip.width == 6 * (96 + 2) + 2  # A, 4 frames, B
    gif = Image.open(manifest["outputs"]["animation"])
    assert gif.n_frames == 6  # there and back
    assert manifest["n"] == 2 and "wrote 4 frames x 2 sample(s)" in err


def test_same_noise_frames_differ_only_by_representation(images, random_ckpt):
    """With shared noise every frame is exactly a sample of its own representation
    with the same stream, so the frames differ, and only because their
    representations do; with new noise the frames use their own streams."""
    model = RCDMModel.from_checkpoint(resolve_checkpoint(str(random_ckpt)))
    enc = create_encoder("random", preprocessing=RCDM)
    ends = enc.encode([Image.open(p).convert("RGB") for p in images[:2]])
    path = interpolate(ends[0], ends[1], 3)
    opts = SamplingOptions(sampler="ddpm", steps="4")
    shared = sample_representations(model, path, 1, opts, same_noise=True)
    assert len({s for row in shared.seeds for s in row}) == 1
    for i in range(len(path)):
        alone = sample_representations(model, path[i : i + 1], 1, opts).samples
        # the first frame is first in its batch either way; a later one, batched after
        # others, may differ in the last bits (a few 1e-6 here)
        assert torch.allclose(shared.samples[i], alone[0], atol=1e-6 if i == 0 else 1e-4), i
    for i in range(len(path)):
        for j in range(i):
            assert (shared.samples[i] - shared.samples[j]).abs().max() > 1e-2, (i, j)
    fresh = sample_representations(model, path, 1, opts, same_noise=False)
    assert len({s for row in fresh.seeds for s in row}) == 3
    assert torch.equal(fresh.samples[0], shared.samples[0])  # the first frame's stream is the shared one
    for i in range(1, len(path)):
        assert (fresh.samples[i] - shared.samples[i]).abs().max() > 1e-2, i


# --- arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a - b + c", {"a": 1, "b": -1, "c": 1}),
        ("0.5*(a + b)", {"a": 0.5, "b": 0.5}),
        ("2 * -a", {"a": -2}),
        ("'my photo.jpg' - my-dog.jpg", {"my photo.jpg": 1, "my-dog.jpg": -1}),
        ("a -b", {"a": 1, "b": -1}),
        ("a*3 - 1e-1*2.jpg", {"a": 3, "2.jpg": -0.1}),
    ],
)
def test_expressions(text, expected):
    tree = expr.parse(text)
    vectors = {p: torch.eye(4)[i] for i, p in enumerate(sorted({n.path for n in expr.paths(tree)}))}
    result = expr.evaluate(text, tree, vectors.__getitem__)
    manual = sum(w * vectors[p] for p, w in expected.items())
    assert torch.allclose(result, manual)
    assert expr.signed_weights(tree) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, column, message",
    [
        ("a + * b", 5, "expected an image path"),
        ("a b", 3, "expected +, - or *"),
        ("(a - b", 7, "'(' at column 1 is never closed"),
        ("a * b", 3, "cannot be multiplied"),
        ("a + 2", 3, "cannot add a number"),
        ("2 + 3", 1, "is a number"),
        ("a )", 3, "unmatched ')'"),
        ("'a.jpg", 1, "unterminated quote"),
        ("", 1, "empty"),
    ],
)
def test_malformed_expressions_point_at_the_column(text, column, message):
    with pytest.raises(expr.ExpressionError) as info:
        tree = expr.parse(text)
        expr.evaluate(text, tree, lambda p: torch.ones(2))
    assert f"at column {column}:" in str(info.value) and message in str(info.value)


@pytest.mark.slow
def test_arith_command(capsys, images, random_ckpt, tmp_path):
    text = f"{images[0]} - {images[1]} + 0.5*{images[2]}"
    code, out, err = rcdm(capsys, "arith", text, "-c", random_ckpt, "-n", 2, *FAST, "-o", tmp_path / "a", "--json", "--rescale")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["coefficients"] == {str(images[0]): 1.0, str(images[1]): -1.0, str(images[2]): 0.5}
    enc = create_encoder("random", preprocessing=RCDM)
    reps = enc.encode([Image.open(p).convert("RGB") for p in images])
    expected = rescale_to(reps[0] - reps[1] + 0.5 * reps[2], reps)
    assert manifest["result_norm"] == pytest.approx(float(expected.norm()), rel=1e-4)
    assert Path(manifest["overview"]).is_file()
    code, _, err = rcdm(capsys, "arith", f"{images[0]} + nothere.jpg", "-c", random_ckpt, "-o", tmp_path / "b")
    assert code == 2 and "no such image 'nothere.jpg'" in err and "column" in err


def test_shared_dimensions_and_transfer_by_hand():
    bank = torch.tensor(
        [[1.0, 1.0, 0.0, 0.0], [1.0, 0.9, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    query = torch.tensor([1.0, 1.0, 0.1, 0.0])
    neighbours, shared = shared_dimensions(query, bank, k=3, min_count=1)
    assert set(neighbours.tolist()) == {0, 1, 2}
    assert shared.tolist() == [True, True, False, False]  # dim 0 in 3 neighbours, dim 1 in 2
    target = torch.tensor([5.0, 6.0, 7.0, 8.0])
    assert transfer_attributes(query, target, shared).tolist() == pytest.approx([5.0, 6.0, 0.1, 0.0])
    assert remove_shared(query, shared).tolist() == pytest.approx([0.0, 0.0, 0.1, 0.0])
    with pytest.raises(UsageError):
        shared_dimensions(query, bank, k=3, min_count=3)


@pytest.mark.slow
def test_attribute_transfer_command(capsys, images, random_ckpt, tmp_path):
    code, out, err = rcdm(
        capsys, "arith", "--attribute-from", images[0], "--neighbors", images[0].parent, "--target", images[1],
        "--k", 3, "--n-common", 1, "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "t", "--json",
    )
    assert code == 0, err
    manifest = json.loads(out)
    assert [o["name"] for o in manifest["outputs"]] == ["attribute", "without-shared", "transferred"]
    assert len(manifest["neighbors"]) == 3 and 0 < manifest["shared_dimensions"] <= 2048
    code, _, err = rcdm(capsys, "arith", "--attribute-from", images[0], "--neighbors", images[0].parent, "--target", images[1], "--k", 9, "-c", random_ckpt, "-o", tmp_path / "u")
    assert code == 2 and "fewer than --k 9" in err


# --- outputs, inputs and failures ------------------------------------------------------------


def test_a_run_over_several_inputs_writes_an_overview(capsys, images, random_ckpt, tmp_path):
    """A row per input, the input then its samples, beside the per-input grids; one
    input's grid is its own overview."""
    code, out, err = rcdm(capsys, "sample", *images, "-c", random_ckpt, "-n", 2, *FAST, "-o", tmp_path / "s", "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["overview"] == str(tmp_path / "s" / "overview.png")
    overview = Image.open(manifest["overview"])
    assert overview.size == (3 * (96 + 2) + 2, 3 * (96 + 14 + 2) + 2)
    # the first row is the first input's grid (the same tiles and labels)
    grid = Image.open(manifest["outputs"][0]["grid"])
    assert np.array_equal(np.asarray(overview)[:96 + 2, 96 + 2:], np.asarray(grid)[:96 + 2, 96 + 2:])
    assert "wrote 6 sample(s), 3 grid(s) and an overview to" in err
    code, out, err = rcdm(capsys, "sample", images[0], "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "one",
                          "--json")
    assert code == 0 and json.loads(out)["overview"] is None and not (tmp_path / "one" / "overview.png").exists()


def test_vectors_from_encode_are_named_after_their_images(capsys, images, random_ckpt, tmp_path):
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / images[0].name  # a second img0: named as sample names image inputs
    twin.write_bytes(images[1].read_bytes())
    reps = tmp_path / "reps.safetensors"
    assert rcdm(capsys, "encode", images[0], twin, images[2], "-c", random_ckpt, "-o", reps)[0] == 0
    code, out, err = rcdm(capsys, "sample", "--rep", reps, "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "s",
                          "--json")
    assert code == 0, err
    names = [o["name"] for o in json.loads(out)["outputs"]]
    assert names == ["img0", "img0-2", "img2"] and (tmp_path / "s" / "img0-2-grid.png").is_file()
    # vectors without that record keep their numbers
    np.save(tmp_path / "reps.npy", load_file(str(reps))["reps"].numpy())
    code, out, err = rcdm(capsys, "sample", "--rep", tmp_path / "reps.npy", "-c", random_ckpt, "-n", 1, *FAST,
                          "-o", tmp_path / "n", "--json")
    assert code == 0 and [o["name"] for o in json.loads(out)["outputs"]] == ["rep-000", "rep-001", "rep-002"]


def test_output_names_never_collide():
    from rcdm_cli.outputs import unique_names

    assert unique_names(["a", "a", "a-2"]) == ["a", "a-3", "a-2"]
    assert unique_names(["a", "a", "a"]) == ["a", "a-2", "a-3"]
    names = unique_names(["x", "x-2", "x", "x-2"])
    assert len(set(names)) == 4 and names[:2] == ["x", "x-2"]


def test_inputs_with_the_same_name_get_their_own_outputs(capsys, images, random_ckpt, tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "a.png").write_bytes(images[0].read_bytes())
    (tmp_path / "a-2.png").write_bytes(images[1].read_bytes())
    inputs = [tmp_path / "x" / "a.png", tmp_path / "y" / "a.png", tmp_path / "a-2.png"]
    code, out, err = rcdm(capsys, "sample", *inputs, "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "s", "--json")
    assert code == 0, err
    grids = [o["grid"] for o in json.loads(out)["outputs"]]
    assert len(set(grids)) == 3 and all(Path(g).is_file() for g in grids)


def test_outputs_are_as_readable_as_the_umask_allows(capsys, images, random_ckpt, tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        code, out, err = rcdm(capsys, "sample", images[0], "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "s", "--json")
    finally:
        os.umask(previous)
    assert code == 0, err
    manifest = json.loads(out)
    for path in [tmp_path / "s" / "manifest.json", manifest["outputs"][0]["grid"], *manifest["outputs"][0]["samples"]]:
        assert os.stat(path).st_mode & 0o777 == 0o644


def test_globs_take_only_images_and_linked_folders_are_followed(capsys, images, random_ckpt, tmp_path):
    from rcdm_cli.inputs import expand_inputs

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "one.png").write_bytes(images[0].read_bytes())
    (folder / "notes.txt").write_text("not an image")
    assert expand_inputs([str(folder / "*")]) == [folder / "one.png"]
    with pytest.raises(UsageError, match="no images among the 1 file"):
        expand_inputs([str(folder / "*.txt")])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "linked").symlink_to(folder, target_is_directory=True)
    (folder / "loop").symlink_to(tmp_path / "data", target_is_directory=True)  # a cycle ends
    assert [p.name for p in expand_inputs([str(tmp_path / "data")])] == ["one.png"]


def _stop_in_second_batch(monkeypatch, stop) -> None:
    """Make the sampler call ``stop()`` as the second batch starts."""
    import rcdm_cli.pipeline.sampling as sampling

    real = sampling.get_sampler
    calls = []

    def stopping(name):
        sampler = real(name)

        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                stop()
            return sampler(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(sampling, "get_sampler", stopping)


def _ctrl_c():
    raise KeyboardInterrupt


def test_an_interrupted_run_keeps_the_finished_inputs(capsys, images, random_ckpt, tmp_path, monkeypatch):
    _stop_in_second_batch(monkeypatch, _ctrl_c)
    out = tmp_path / "s"
    code, _, err = rcdm(capsys, "sample", images[0], images[1], "-c", random_ckpt, "-n", 2, "-b", 2, *FAST, "-o", out)
    assert code == 130 and "interrupted" in err and "stopped after 1 of 2 input(s)" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and [o["name"] for o in manifest["outputs"]] == ["img0"]
    assert all(Path(p).is_file() for p in manifest["outputs"][0]["samples"]) and (out / "img0-grid.png").is_file()
    assert not (out / "img1-grid.png").exists() and not list(out.rglob(".*.tmp"))


def test_bad_output_places_and_noise_fail_before_any_work(capsys, images, random_ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = rcdm(capsys, "sample", images[0], "-c", random_ckpt, "-n", 1, *FAST, "-o", blocker)
    assert code == 2 and "is a file, where an output folder would go" in err and "encoding" not in err
    from safetensors.torch import save_file

    noise = tmp_path / "noise.safetensors"
    save_file({"noise": torch.zeros(3, 3, 32, 32)}, str(noise))
    code, _, err = rcdm(capsys, "sample", images[0], "-c", random_ckpt, "-n", 2, *FAST, "--noise", noise, "-o", tmp_path / "n")
    assert code == 2 and "initial noise must have shape 2x3x32x32 or 1x3x32x32, got 3x3x32x32" in err
    assert not (tmp_path / "n").exists()
    code, _, err = rcdm(capsys, "sample", images[0], "-c", random_ckpt, "--seed", "-1", *FAST, "-o", tmp_path / "m")
    assert code == 2 and "--seed must be a non-negative integer" in err


@pytest.mark.slow
def test_interpolate_and_arith_keep_existing_outputs(capsys, images, random_ckpt, tmp_path):
    for args in (
        ["interpolate", images[0], images[1], "--frames", 2],
        ["arith", f"{images[0]} - {images[1]}"],
    ):
        out = tmp_path / args[0]
        code, _, err = rcdm(capsys, *args, "-c", random_ckpt, "-n", 1, *FAST, "-o", out)
        assert code == 0, err
        before = (out / "manifest.json").read_bytes()
        code, _, err = rcdm(capsys, *args, "-c", random_ckpt, "-n", 1, *FAST, "-o", out)
        assert code == 2 and "--overwrite" in err
        assert (out / "manifest.json").read_bytes() == before


def test_arith_checks_the_whole_expression_before_any_work(capsys, images, random_ckpt, tmp_path):
    for text, message in (
        ("2 + 3", "is a number"),
        (f"{images[0]} * {images[1]}", "cannot be multiplied"),
        (f"1e999*{images[0]}", "too large to represent"),
    ):
        code, _, err = rcdm(capsys, "arith", text, "-c", random_ckpt, *FAST, "-o", tmp_path / "a")
        assert code == 2 and message in err and "column" in err, err
        assert "encoding" not in err and not (tmp_path / "a").exists()


def test_attribute_transfer_refuses_folders_and_rescale(capsys, images, random_ckpt, tmp_path):
    common = ["--neighbors", images[0].parent, "--k", 2, "--n-common", 1, "-c", random_ckpt, *FAST, "-o", tmp_path / "t"]
    code, _, err = rcdm(capsys, "arith", "--attribute-from", images[0], "--target", images[0].parent, *common)
    assert code == 2 and "--target must be an image file" in err
    code, _, err = rcdm(capsys, "arith", "--attribute-from", images[0], "--target", images[1], "--rescale", *common)
    assert code == 2 and "--rescale applies to expressions" in err


@pytest.mark.parametrize(
    "recorded, given, message",
    [
        (RCDM.to_dict(), "native", "--preprocessing native contradicts it"),
        (None, "rcdm", "--preprocessing rcdm contradicts it"),
        (RCDM.to_dict(), "squash", "unknown preprocessing 'squash'"),
    ],
)
def test_any_preprocessing_contradiction_is_an_error(recorded, given, message):
    from rcdm_cli.pipeline.conditioning import plan_conditioning

    native = create_encoder("random").preprocessing.to_dict()
    meta = CheckpointMeta(
        unet=PRESETS["tiny"].unet.with_rep_dim(2048), diffusion=PRESETS["tiny"].diffusion,
        encoder=EncoderInfo(name="random", layer="backbone", rep_dim=2048, preprocessing=recorded or native),
    )
    with pytest.raises(UsageError, match=message):
        plan_conditioning(meta, preprocessing=given)
    assert plan_conditioning(meta).preprocessing.to_dict() == (recorded or native)


def test_a_weights_variant_the_model_was_not_trained_with_is_refused(random_ckpt):
    from rcdm_cli.checkpoint.store import read_meta
    from rcdm_cli.pipeline.conditioning import plan_conditioning

    with pytest.raises(UsageError, match="--encoder random@other contradicts it"):
        plan_conditioning(read_meta(random_ckpt), encoder="random@other")


@pytest.mark.slow
def test_encode_with_a_checkpoint_gives_what_sample_rep_needs(capsys, images, random_ckpt, tmp_path):
    """`rcdm encode -c` computes the model's own representation (its encoder, layer
    and preprocessing), and `sample --rep` takes it and gives what sampling from the
    images gives; vectors recorded as another representation are refused."""
    reps_file = tmp_path / "reps.safetensors"
    code, out, err = rcdm(capsys, "encode", images[0], images[1], "-c", random_ckpt, "-o", reps_file, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["encoder"], info["layer"], info["preprocessing"]["name"]) == ("random", "backbone", "rcdm")
    reps = load_file(str(reps_file))["reps"]
    expected = create_encoder("random", preprocessing=RCDM).encode([Image.open(p).convert("RGB") for p in images[:2]], "backbone")
    assert torch.allclose(reps, expected, atol=1e-5)

    code, out, err = rcdm(capsys, "sample", "--rep", reps_file, "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "r", "--save-tensors")
    assert code == 0, err
    code, out, err = rcdm(capsys, "sample", images[0], images[1], "-c", random_ckpt, "-n", 1, *FAST, "-o", tmp_path / "i", "--save-tensors")
    assert code == 0, err
    from_reps = load_file(str(tmp_path / "r" / "samples.safetensors"))["samples"]
    from_images = load_file(str(tmp_path / "i" / "samples.safetensors"))["samples"]
    assert torch.allclose(from_reps, from_images, atol=1e-4)

    # the encoder's native input, another layer: refused, with the way out
    native = tmp_path / "native.safetensors"
    assert rcdm(capsys, "encode", images[0], "--encoder", "random", "-o", native)[0] == 0
    code, _, err = rcdm(capsys, "sample", "--rep", native, "-c", random_ckpt, *FAST, "-o", tmp_path / "n")
    assert code == 2 and "was computed from" in err and "rcdm encode IMAGES --checkpoint" in err
    layer3 = tmp_path / "layer3.safetensors"
    assert rcdm(capsys, "encode", images[0], "--encoder", "random", "--layer", "layer3", "--preprocessing", "rcdm", "-o", layer3)[0] == 0
    code, _, err = rcdm(capsys, "sample", "--rep", layer3, "-c", random_ckpt, *FAST, "-o", tmp_path / "l")
    assert code == 2 and ("random/layer3" in err or "1024-d" in err)
    # a contradiction with the checkpoint is refused by encode too
    code, _, err = rcdm(capsys, "encode", images[0], "-c", random_ckpt, "--layer", "layer3", "-o", tmp_path / "x.safetensors")
    assert code == 2 and "contradicts" in err
    code, _, err = rcdm(capsys, "encode", images[0], "-o", tmp_path / "y.safetensors")
    assert code == 2 and "--encoder" in err


@pytest.mark.parametrize(
    "source, sampler, steps, expected",
    [
        ({"kind": "released", "name": "dino-head"}, "auto", "auto", ("ddpm", "100")),
        ({"kind": "converted", "file": "rcdm_ema.pt"}, "auto", "auto", ("ddpm", "100")),
        ({"kind": "released", "name": "dino-head"}, "auto", "25", ("ddpm", "25")),
        ({}, "auto", "auto", ("dpm++2m", "quad8")),  # a model rcdm trained
        ({"kind": "init", "preset": "tiny"}, "auto", "quad15", ("dpm++2m", "quad15")),
        ({"kind": "released", "name": "dino-head"}, "dpm++2m", "auto", ("dpm++2m", "quad8")),
        ({}, "ddim", "auto", ("ddim", "100")),
        ({}, "dpm++3m", "auto", ("dpm++3m", "quad8")),
        ({}, "ddpm", "ddim7", ("ddpm", "ddim7")),
    ],
)
def test_auto_sampling_is_the_original_for_the_authors_models_and_the_measured_fast_one_otherwise(source, sampler, steps, expected):
    from rcdm_cli.pipeline.sampling import resolve_sampling

    meta = CheckpointMeta(unet=PRESETS["tiny"].unet, diffusion=PRESETS["tiny"].diffusion, source=source)
    resolved = resolve_sampling(meta, SamplingOptions(sampler=sampler, steps=steps, seed=3))
    assert (resolved.sampler, resolved.steps, resolved.seed) == (*expected, 3)


def test_an_unknown_sampler_with_auto_steps_is_named(random_ckpt):
    from rcdm_cli.errors import UsageError
    from rcdm_cli.pipeline.sampling import resolve_sampling

    with pytest.raises(UsageError, match="unknown sampler 'dpm'"):
        resolve_sampling(resolve_checkpoint(str(random_ckpt)).meta, SamplingOptions(sampler="dpm"))


def test_the_manifest_records_what_auto_resolved_to(capsys, random_ckpt, tmp_path):
    code, out, err = rcdm(capsys, "sample", "--rep", "random:1", "-c", random_ckpt, "-n", 1, "-o", tmp_path / "s", "--json")
    assert code == 0, err
    sampling = json.loads(out)["sampling"]
    assert (sampling["sampler"], sampling["steps"], sampling["network_calls"]) == ("dpm++2m", "quad8", 8)


def test_sigterm_stops_sampling_as_ctrl_c_does(capsys, images, random_ckpt, tmp_path, monkeypatch):
    """What `timeout` and batch schedulers send: the finished input's files and an
    incomplete manifest stay, one line says so, and the exit code is the shell's 143."""
    import os
    import signal

    _stop_in_second_batch(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    out = tmp_path / "s"
    code, _, err = rcdm(capsys, "sample", images[0], images[1], "-c", random_ckpt, "-n", 2, "-b", 2, *FAST, "-o", out)
    lines = err.strip().splitlines()
    assert code == 143 and lines[-1] == "rcdm: error: stopped by SIGTERM" and "stopped after 1 of 2 input(s)" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and [o["name"] for o in manifest["outputs"]] == ["img0"]
    assert not (out / "img1-grid.png").exists() and not list(out.rglob(".*.tmp"))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back after the command


@pytest.mark.slow
def test_sampling_in_parts_draws_and_writes_what_one_part_would(capsys, images, random_ckpt, tmp_path, monkeypatch):
    """A long list of inputs is read, encoded, sampled and written a few inputs at a
    time (so a million-image batch job holds one part in memory), with the very
    samples, seeds and manifest of a run done in one part."""
    import rcdm_cli.pipeline.stream as stream

    inputs = [*images, *images[:2]]  # five inputs, two sharing a stem with others
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    code, out, err = rcdm(capsys, "sample", *inputs, "-c", random_ckpt, "-n", 2, "-b", 3, *FAST, "-o", whole, "--json")
    assert code == 0, err
    one = json.loads(out)
    monkeypatch.setattr(stream, "STREAM_SAMPLES", 4)  # two inputs (of 2 samples) per part: three parts
    code, out, err = rcdm(capsys, "sample", *inputs, "-c", random_ckpt, "-n", 2, "-b", 3, *FAST, "-o", parts, "--json")
    assert code == 0, err
    streamed = json.loads(out)
    assert streamed["complete"] and [o["name"] for o in streamed["outputs"]] == [o["name"] for o in one["outputs"]]
    assert [o["seeds"] for o in streamed["outputs"]] == [o["seeds"] for o in one["outputs"]]
    for a, b in zip(one["outputs"], streamed["outputs"]):
        for x, y in zip(a["samples"], b["samples"]):
            assert np.array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(y)))
    assert streamed["timings"]["seconds_per_image"] > 0
