"""The command line: outputs, reproducibility and the error convention."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from helpers import rcdm
from rcdm_cli.checkpoint.resolve import resolve_checkpoint
from rcdm_cli.pipeline.model import RCDMModel
from rcdm_cli.pipeline.sampling import SamplingOptions, sample_representations


def _sample_args(ckpt, out, *extra):
    return ["sample", "-c", ckpt, "--rep", "random:2", "-n", "3", "--steps", "ddim4", "--sampler", "ddim", "--out", out, *extra]


def test_sample_writes_pngs_grids_and_manifest(capsys, tiny_checkpoint, tmp_path):
    code, out, err = rcdm(capsys, *_sample_args(tiny_checkpoint, tmp_path / "s", "--json", "--save-tensors"))
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest == json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert len(manifest["outputs"]) == 2
    for entry in manifest["outputs"]:
        assert len(entry["samples"]) == 3 and len(set(entry["seeds"])) == 3
        for path in entry["samples"]:
            assert Image.open(path).size == (32, 32)
        grid = Image.open(entry["grid"])
        assert grid.width > 3 * 96  # three enlarged tiles side by side
    assert manifest["checkpoint"]["sha256"] and manifest["sampling"]["network_calls"] == 4
    tensors = load_file(str(tmp_path / "s" / "samples.safetensors"))
    assert tensors["samples"].shape == (2, 3, 3, 32, 32) and tensors["reps"].shape == (2, 8)
    assert tensors["samples"].abs().max() <= 1
    # the PNGs are the tensors, quantised
    png = np.asarray(Image.open(manifest["outputs"][1]["samples"][2]))
    expected = ((tensors["samples"][1, 2] + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(png, expected)


@pytest.mark.slow
def test_same_seed_same_images_other_seed_other_images(capsys, tiny_checkpoint, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        code, _, err = rcdm(capsys, *_sample_args(tiny_checkpoint, tmp_path / name, "--seed", seed, "--sampler", "ddpm"))
        assert code == 0, err
    read = lambda d: (tmp_path / d / "rep-001" / "sample-002.png").read_bytes()
    assert read("a") == read("b")
    assert read("a") != read("c")


def test_samples_do_not_depend_on_batch_size(tiny_checkpoint):
    model = RCDMModel.from_checkpoint(resolve_checkpoint(str(tiny_checkpoint)))
    reps = torch.randn(2, 8)
    a = sample_representations(model, reps, 3, SamplingOptions(sampler="ddpm", steps="5", batch_size=6)).samples
    b = sample_representations(model, reps, 3, SamplingOptions(sampler="ddpm", steps="5", batch_size=4)).samples
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".pt"])
def test_rep_and_noise_files_give_exactly_what_the_engine_gives(capsys, tiny_checkpoint, tmp_path, suffix):
    reps = torch.randn(2, 8)
    noise = torch.randn(1, 3, 32, 32)
    rep_file = tmp_path / f"reps{suffix}"
    if suffix == ".npy":
        np.save(rep_file, reps.numpy())
    elif suffix == ".safetensors":
        save_file({"reps": reps}, str(rep_file))
    else:
        torch.save(reps, rep_file)
    noise_file = tmp_path / "noise.safetensors"
    save_file({"noise": noise}, str(noise_file))
    code, _, err = rcdm(
        capsys, "sample", "-c", tiny_checkpoint, "--rep", rep_file, "--noise", noise_file, "-n", "2",
        "--sampler", "ddim", "--steps", "ddim5", "--out", tmp_path / "o", "--save-tensors",
    )
    assert code == 0, err
    got = load_file(str(tmp_path / "o" / "samples.safetensors"))["samples"]
    model = RCDMModel.from_checkpoint(resolve_checkpoint(str(tiny_checkpoint)))
    expected = sample_representations(
        model, reps, 2, SamplingOptions(sampler="ddim", steps="ddim5"), noise=noise
    ).samples
    assert torch.equal(got, expected)
    assert torch.allclose(got[0, 0], got[0, 1])  # broadcast noise + DDIM eta 0: identical


def test_existing_outputs_are_kept_without_overwrite(capsys, tiny_checkpoint, tmp_path):
    assert rcdm(capsys, *_sample_args(tiny_checkpoint, tmp_path / "s"))[0] == 0
    before = (tmp_path / "s" / "manifest.json").read_bytes()
    code, _, err = rcdm(capsys, *_sample_args(tiny_checkpoint, tmp_path / "s", "--seed", "5"))
    assert code == 2 and "already exist" in err and "--overwrite" in err
    assert (tmp_path / "s" / "manifest.json").read_bytes() == before
    assert rcdm(capsys, *_sample_args(tiny_checkpoint, tmp_path / "s", "--seed", "5", "--overwrite"))[0] == 0


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["sample", "-c", "nope.safetensors", "--rep", "random"], 2, "no such checkpoint"),
        (["sample", "-c", "init:tiny", "--rep", "random:x"], 2, "random:K"),
        (["sample", "-c", "init:tiny", "--rep", "random", "--steps", "ddim7x"], 2, "bad step spec"),
        (["sample", "-c", "init:tiny", "--rep", "random", "--sampler", "euler"], 2, "unknown sampler 'euler'"),
        (["sample", "-c", "init:tiny", "--rep", "random", "-n", "0"], 2, "must be positive"),
        (["sample", "-c", "init:huge", "--rep", "random"], 2, "unknown preset"),
        (["sample", "-c", "released:dino-neck", "--rep", "random"], 2, "unknown released checkpoint"),
        (["sample", "--rep", "random"], 2, "--checkpoint"),
        (["--device", "tpu", "sample", "-c", "init:tiny", "--rep", "random"], 2, "device"),
        (["frobnicate"], 2, "No such command"),
        (["convert", "missing.pt", "-o", "x.safetensors"], 2, "no such file"),
    ],
)
def test_errors_are_one_line_with_the_right_exit_code(capsys, tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    got, out, err = rcdm(capsys, *args)
    assert got == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rcdm: error:") and message in lines[0], err
    assert "Traceback" not in err and out == ""


def test_wrong_representation_width(capsys, tiny_checkpoint, tmp_path):
    np.save(tmp_path / "r.npy", np.zeros((1, 5), dtype=np.float32))
    code, _, err = rcdm(capsys, "sample", "-c", tiny_checkpoint, "--rep", tmp_path / "r.npy", "--out", tmp_path / "o")
    assert code == 2 and "8-d representations, got 5-d" in err


def test_corrupt_checkpoint_is_a_runtime_error_and_debug_shows_the_traceback(capsys, tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:4000])
    code, _, err = rcdm(capsys, "sample", "-c", bad, "--rep", "random", "--out", tmp_path / "o")
    assert code == 1 and "truncated or corrupt" in err and "Traceback" not in err
    code, _, err = rcdm(capsys, "--debug", "sample", "-c", bad, "--rep", "random", "--out", tmp_path / "o")
    assert code == 1 and "Traceback" in err


def test_convert_command(capsys, reference_dir, tmp_path):
    from safetensors.torch import load_file as lf

    tensors = lf(str(reference_dir / "official-unet-tiny.safetensors"))
    torch.save({k[11:]: v for k, v in tensors.items() if k.startswith("state_dict.")}, tmp_path / "o.pt")
    flags = (
        "--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2,2 --attention_resolutions 16,8 "
        "--num_heads 4 --learn_sigma True --resblock_updown True --use_scale_shift_norm True"
    )
    code, out, err = rcdm(capsys, "convert", tmp_path / "o.pt", "--flags", flags, "-o", tmp_path / "m.safetensors", "--json")
    assert code == 0, err
    assert json.loads(out)["meta"]["unet"]["rep_dim"] == 64
    code, _, err = rcdm(capsys, "convert", tmp_path / "o.pt", "--flags", flags, "-o", tmp_path / "m.safetensors")
    assert code == 2 and "already exists" in err


def test_quiet_prints_nothing_on_success(capsys, tiny_checkpoint, tmp_path):
    code, out, err = rcdm(capsys, "--quiet", *_sample_args(tiny_checkpoint, tmp_path / "s"))
    assert code == 0 and out == "" and err == ""


def test_python_dash_m_and_version():
    proc = subprocess.run([sys.executable, "-m", "rcdm_cli", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("rcdm ")


def _spinner_terminal(monkeypatch):
    """A terminal for rcdm's stderr, with logging set up as on a terminal (rich lines
    on it); the loggers are restored when the test ends. Returns the terminal and
    the list of messages logged."""
    import io
    import logging

    from rich.console import Console

    import rcdm_cli.cli.console as console_mod
    import rcdm_cli.cli.downloads as downloads_mod

    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    monkeypatch.setattr(console_mod, "err", terminal)
    monkeypatch.setattr(downloads_mod, "err", terminal)
    monkeypatch.setattr(console_mod.settings, "quiet", False)
    for name in ("rcdm", "py.warnings"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", logger.handlers[:])
        monkeypatch.setattr(logger, "level", logger.level)
        monkeypatch.setattr(logger, "propagate", logger.propagate)
    console_mod.setup_logging(debug=False, quiet=False)
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logging.getLogger("rcdm").addHandler(Keep())
    return terminal, messages


def _download_under_a_spinner(terminal):
    import rcdm_cli.cli.downloads as downloads_mod

    with terminal.status("loading"):
        progress = downloads_mod.download_progress()
        for done in (0, 5_000_000, 10_000_000):
            progress(done, 10_000_000)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.file.getvalue())  # the text, without colours and cursor moves


def test_download_progress_inside_a_status_spinner_falls_back_to_log_lines(monkeypatch):
    """On a terminal, a download can start while a status spinner is live (loading a
    released model). Where rich allows one live display (rich < 14 raises LiveError
    for a second), the bar must step aside: the download is reported by log lines,
    shown above the spinner."""
    from rich.errors import LiveError

    terminal, messages = _spinner_terminal(monkeypatch)
    live = []
    set_live = terminal.set_live

    def one_live_display_only(display):  # what rich < 14 does
        if live:
            raise LiveError("Only one live display may be active at once")
        live.append(display)
        return set_live(display)

    monkeypatch.setattr(terminal, "set_live", one_live_display_only)
    shown = _download_under_a_spinner(terminal)
    assert len(live) == 1  # the spinner's; the bar was refused
    assert messages == ["10 MB to fetch", "downloaded 50%", "downloaded 100%"]
    for message in messages:
        assert message in shown, shown
    assert "loading" in shown and "/10.0 MB" not in shown  # the spinner, and no bar


def test_download_progress_inside_a_status_spinner_is_shown(monkeypatch):
    """The same with the installed rich: rich >= 14 shows the bar under the spinner,
    older versions refuse it and the download is reported by log lines."""
    from importlib.metadata import version

    terminal, messages = _spinner_terminal(monkeypatch)
    shown = _download_under_a_spinner(terminal)
    assert "loading" in shown and "10 MB to fetch" in shown
    if int(version("rich").split(".")[0]) >= 14:
        assert "0.0/10.0 MB" in shown and messages == ["10 MB to fetch"]
    else:
        assert messages == ["10 MB to fetch", "downloaded 50%", "downloaded 100%"]


def test_a_bare_command_prints_its_help_and_no_empty_error(capsys):
    code, out, err = rcdm(capsys, "convert")
    assert code == 2 and "Usage: rcdm convert" in out and "error" not in err


def test_errors_stay_on_one_line(capsys, monkeypatch, tmp_path):
    from rcdm_cli.checkpoint import convert as convert_mod
    from rcdm_cli.errors import RcdmError

    def failing(*args, **kwargs):
        raise RcdmError("first part\nsecond part")

    monkeypatch.setattr(convert_mod, "convert_official", failing)
    code, _, err = rcdm(capsys, "convert", tmp_path / "x.pt", "-o", tmp_path / "y.safetensors")
    assert code == 1 and err.strip().splitlines() == ["rcdm: error: first part second part"]


def test_library_warnings_are_kept_for_debug():
    import logging

    from rcdm_cli.cli.console import setup_logging

    setup_logging(debug=False, quiet=False)
    assert all(isinstance(h, logging.NullHandler) for h in logging.getLogger("py.warnings").handlers)
    setup_logging(debug=True, quiet=False)
    assert not any(isinstance(h, logging.NullHandler) for h in logging.getLogger("py.warnings").handlers)
    setup_logging(debug=False, quiet=False)
