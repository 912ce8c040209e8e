"""What holds for every command line: the global options go before the command or
anywhere among its arguments, help shows flags without a value, and an unknown timm
model name is answered with the nearest names."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import typer

from helpers import rcdm as _rcdm
from rcdm_cli.cli.app import GLOBAL_FLAGS, GLOBAL_VALUED, app, run, split_global_options
from rcdm_cli.cli.console import settings


def _commands():
    """Every command and group under ``rcdm``, as its path of names."""

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


COMMAND_PATHS = [path for path, _ in _commands()]


def _sample(ckpt, out, *extra):
    return ["sample", "-c", ckpt, "--rep", "random:2", "-n", "3", "--steps", "ddim4", "--sampler", "ddim", "--out", out, *extra]


# --- the global options anywhere ------------------------------------------------------


@pytest.mark.parametrize(
    "args, lifted, rest, dangling",
    [
        (["--device", "cpu", "sample", "x"], ["--device", "cpu"], ["sample", "x"], None),
        (["sample", "x.jpg", "--device", "cpu"], ["--device", "cpu"], ["sample", "x.jpg"], None),
        (["sample", "--device=cuda:1", "x", "-q"], ["--device=cuda:1", "-q"], ["sample", "x"], None),
        (
            ["evaluate", "rank", "dir/", "--quiet", "-c", "released:dino-head", "--debug"],
            ["--quiet", "--debug"],
            ["evaluate", "rank", "dir/", "-c", "released:dino-head"],
            None,
        ),
        (["sample", "x", "--", "--quiet", "--device", "cpu"], [], ["sample", "x", "--", "--quiet", "--device", "cpu"], None),
        (["sample", "-q", "x", "--", "-q"], ["-q"], ["sample", "x", "--", "-q"], None),
        (["sample", "x", "--device"], [], ["sample", "x", "--device"], "--device"),
        (["sample", "--quiet=1", "--debugging", "--devices", "cpu"], [], ["sample", "--quiet=1", "--debugging", "--devices", "cpu"], None),
    ],
)
def test_split_global_options(args, lifted, rest, dangling):
    assert split_global_options(args) == (lifted, rest, dangling)


def test_no_command_declares_an_option_the_global_options_would_take():
    """The global options are lifted out of every command line, so a command's own
    ``-q`` or ``--device`` could never be reached: none may declare one."""
    for path, command in _commands():
        if not path:
            continue
        for param in command.params:
            taken = set(param.opts + param.secondary_opts) & set(GLOBAL_FLAGS + GLOBAL_VALUED)
            assert not taken, f"rcdm {' '.join(path)} declares {taken}"


@pytest.mark.parametrize(
    "where",
    [
        ["--device", "cpu", "--quiet", "encoders", "thumbnail", "--json"],
        ["encoders", "thumbnail", "--json", "--device", "cpu", "--quiet"],
        ["encoders", "--device=cpu", "thumbnail", "-q", "--json"],
    ],
)
def test_global_options_before_or_after_the_command_set_the_same(capsys, where):
    code, out, err = _rcdm(capsys, *where)
    assert code == 0, err
    assert json.loads(out)["encoders"][0]["name"] == "thumbnail"
    assert (settings.device, settings.quiet, settings.debug) == ("cpu", True, False)
    assert logging.getLogger("rcdm").level == logging.ERROR


def test_device_after_the_command_is_the_device_used(capsys, tmp_path):
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (32, 32), (60 * i, 90, 120)).save(tmp_path / f"{i}.png")
    for args in (
        ["sample", "-c", "init:tiny", "--rep", "random", "--device", "tpu", "-o", tmp_path / "o"],
        ["sample", "-c", "init:tiny", "--device=tpu", "--rep", "random", "-o", tmp_path / "o"],
        ["evaluate", "rank", tmp_path, "--device", "tpu", "-c", "init:tiny"],
    ):
        code, out, err = _rcdm(capsys, *args)
        assert code == 2 and err.strip() == "rcdm: error: unknown device 'tpu': expected auto, cpu, cuda, cuda:N or mps"
        assert out == ""


def test_quiet_after_the_command_prints_nothing_on_success(capsys, tiny_checkpoint, tmp_path):
    code, out, err = _rcdm(capsys, *_sample(tiny_checkpoint, tmp_path / "loud"))
    assert code == 0 and err != ""  # what --quiet silences
    for i, flag in enumerate(("--quiet", "-q")):
        code, out, err = _rcdm(capsys, "sample", "-c", tiny_checkpoint, flag, *_sample(tiny_checkpoint, tmp_path / str(i))[3:])
        assert code == 0 and out == "" and err == ""
        assert (tmp_path / str(i) / "manifest.json").is_file()


def test_debug_after_the_command_shows_the_traceback(capsys, tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:4000])
    code, _, err = _rcdm(capsys, *_sample(bad, tmp_path / "o"))
    assert code == 1 and "Traceback" not in err
    code, _, err = _rcdm(capsys, *_sample(bad, tmp_path / "o", "--debug"))
    assert code == 1 and "Traceback" in err and "truncated or corrupt" in err


def test_tokens_after_a_double_dash_are_the_commands(capsys):
    code, out, err = _rcdm(capsys, "encoders", "--", "--quiet")
    assert code == 2 and "unknown encoder '--quiet'" in err
    assert settings.quiet is False


def test_a_device_without_its_value_is_a_usage_error(capsys):
    for args in (["encoders", "thumbnail", "--device"], ["--device"]):
        code, out, err = _rcdm(capsys, *args)
        assert code == 2 and err.startswith("rcdm: error: Option '--device' requires an argument.")
        assert len(err.strip().splitlines()) == 1


def test_global_options_after_the_command_from_the_shell(tmp_path):
    """The console script reads sys.argv: the same lifting applies."""
    done = subprocess.run(
        [sys.executable, "-m", "rcdm_cli", "sample", "-c", "init:tiny", "--rep", "random", "-o", tmp_path / "o", "--device", "tpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "unknown device 'tpu'" in done.stderr, done.stderr


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=[" ".join(p) or "rcdm" for p in COMMAND_PATHS])
def test_every_help_mentions_the_global_options(capsys, path):
    code, out, _ = _rcdm(capsys, *path, "--help")
    assert code == 0
    text = " ".join(out.split())
    for option in ("--device", "--quiet", "--debug"):
        assert option in text, f"rcdm {' '.join(path)} --help does not mention {option}"
    if path:
        assert "Global options --device, --quiet (-q) and --debug are accepted here too" in text


# --- completion -------------------------------------------------------------------------


def _complete(monkeypatch, capsys, words: str, cword: int) -> list[str]:
    monkeypatch.setenv("_RCDM_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(cword))
    with pytest.raises(SystemExit):
        run([])
    return capsys.readouterr().out.split()


@pytest.mark.parametrize(
    "words, cword, expected",
    [
        ("rcdm sample x --qu", 3, ["--quiet"]),
        ("rcdm evaluate rank d --dev", 4, ["--device"]),
        ("rcdm sample x --device cpu --encoder thu", 6, ["thumbnail"]),
        ("rcdm sample x -q --encoder thu", 5, ["thumbnail"]),
        ("rcdm --quiet sample --encoder thu", 4, ["thumbnail"]),
    ],
)
def test_completion_knows_the_global_options_after_the_command(monkeypatch, capsys, words, cword, expected):
    assert _complete(monkeypatch, capsys, words, cword) == expected


def test_completing_the_value_of_a_device_after_the_command_fails_quietly(monkeypatch, capsys):
    assert _complete(monkeypatch, capsys, "rcdm sample x --device ", 4) == []


# --- flags in help ------------------------------------------------------------------------


def _option_rows(out: str) -> dict[str, str]:
    """Each option's row of a help panel, under each of its long names, whitespace
    collapsed (``--augment,--augmentation``; a required one is marked ``*``)."""
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "│":
            first = words[2] if words[1] == "*" else words[1]
            if first.startswith("--"):
                for name in first.split(","):
                    rows[name] = " ".join(words)
    return rows


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=[" ".join(p) or "rcdm" for p in COMMAND_PATHS])
def test_help_shows_flags_without_a_value(capsys, monkeypatch, path):
    monkeypatch.setenv("COLUMNS", "200")  # one row per option
    code, out, _ = _rcdm(capsys, *path, "--help")
    assert code == 0
    assert "<bool>" not in out
    (command,) = [c for p, c in _commands() if p == path]
    rows = _option_rows(out)
    flags = [p for p in command.params if getattr(p, "is_bool_flag", False) and not p.hidden]
    valued = [p for p in command.params if p.param_type_name == "option" and not getattr(p, "is_flag", False) and not p.hidden]
    long = lambda param: next(o for o in param.opts if o.startswith("--"))  # noqa: E731
    for param in flags:
        row = rows[long(param)]
        assert "<" not in row.split(param.help.split()[0])[0], row  # nothing between the name and the help
    for param in valued:
        assert "<" in rows[long(param)], rows[long(param)]  # options that take a value still say which
    assert "<" not in rows["--help"].split("Show this")[0]


def test_sample_help_rows(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    _, out, _ = _rcdm(capsys, "sample", "--help")
    rows = _option_rows(out)
    assert rows["--overwrite"] == "│ --overwrite Replace existing output files. │"
    assert rows["--num-samples"].startswith("│ --num-samples -n <int> Samples per input.")


# --- timm names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed, first",
    [
        ("vit_base_patch16_244", "vit_base_patch16_224"),  # a typo
        ("resnet5", "resnet50"),  # unfinished
        ("convnxt_tiny", "convnext_tiny"),  # a letter left out
        ("VIT-BASE-PATCH16-224", "vit_base_patch16_224"),  # as written in a paper
    ],
)
def test_an_unknown_timm_model_suggests_the_nearest_names(capsys, typed, first):
    code, out, err = _rcdm(capsys, "encoders", f"timm:{typed}")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"rcdm: error: timm has no model '{typed}'; similar: {first}, ")
    assert len(line.partition("similar: ")[2].split(", ")) <= 8


def test_close_model_names_order_and_fallbacks():
    from rcdm_plugins.timm_models import close_model_names

    models = ["convnext_tiny", "resnet18", "resnet50", "resnet50d", "vit_base_patch16_224", "vit_small_patch16_224", "wide_resnet50_2"]
    assert close_model_names("resnet5", models)[:2] == ["resnet50", "resnet50d"]
    assert "wide_resnet50_2" in close_model_names("resnet5", models)  # contains it
    assert close_model_names("vit_base_patch16_244", models)[0] == "vit_base_patch16_224"
    assert close_model_names("vit_enormous", models)[0].startswith("vit_")  # its first part
    assert close_model_names("zzzz", models) == []
    assert len(close_model_names("e", models, n=3)) == 3
