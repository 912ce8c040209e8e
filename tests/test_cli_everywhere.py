"""What holds for every command line: help shows flags without a value, and an
unknown timm model name is answered with the nearest names."""

from __future__ import annotations

import pytest
import typer

from rcdm_cli.cli.app import app, run


def _rcdm(capsys, *args):
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _commands():
    """Every command and group under ``rcdm``, as its path of names."""

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


COMMAND_PATHS = [path for path, _ in _commands()]


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
