"""Every ``rcdm`` command line in README.md and docs/ parses against the CLI as it is:
options exist, values convert, choices are valid. The commands' bodies are not run
(they need ImageNet and downloads); what a reader copies must at least be accepted."""

from __future__ import annotations

import re
import shlex

import pytest
import typer

from helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# options whose callbacks act at parse time (they would install files)
ACTING = {"--install-completion", "--show-completion"}
# names that docs/plugins.md's example plugins register
EXAMPLE_PLUGIN_NAMES = {"tinyconv", "warmth"}


def _shell_lines(text: str):
    # every fence is matched with its language, so that a python or toml block is
    # skipped whole rather than pairing its closing fence with the next opening one
    for language, block in re.findall(r"```([a-z]*)\n(.*?)```", text, re.S):
        if language not in ("", "bash", "sh", "console"):
            continue
        pending = ""
        for raw in block.splitlines():
            line = raw.rstrip()
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            yield pending + line
            pending = ""


def _rcdm_commands(text: str):
    """The argument lists of every ``rcdm`` invocation, read as the shell reads them:
    pipes, ``&&``, ``;``, redirections and comments taken off; ``torchrun ... -m
    rcdm_cli`` counts."""
    operators = {"|", "||", "&&", ";", "&"}
    for line in _shell_lines(text):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token not in operators:
                segment.append(token)
                continue
            words, segment = segment, []
            if "rcdm_cli" in words:
                words = ["rcdm", *words[words.index("rcdm_cli") + 1 :]]
            if not words or words[0] != "rcdm":
                continue
            cut = next((i for i, w in enumerate(words) if w[0] in "<>"), len(words))
            yield words[1:cut]


COMMANDS = [
    (page.relative_to(REPO).as_posix(), args)
    for page in PAGES
    for args in _rcdm_commands(page.read_text())
    if not ACTING & set(args)
]


def _parsing_only_command():
    command = typer.main.get_command(__import__("rcdm_cli.cli.app", fromlist=["app"]).app)

    def leaves(c):
        if hasattr(c, "commands"):
            for sub in c.commands.values():
                yield from leaves(sub)
        else:
            yield c

    for leaf in leaves(command):
        leaf.callback = lambda *args, **kwargs: None
    return command


def test_the_docs_show_commands():
    assert len(COMMANDS) > 60
    pages = {page for page, _ in COMMANDS}
    for name in ("demo", "train", "sample", "interpolate", "arith", "attack", "evaluate", "encoders", "convert"):
        assert f"docs/commands/{name}.md" in pages


@pytest.mark.parametrize("page, args", COMMANDS, ids=[f"{p}: {' '.join(a)[:60]}" for p, a in COMMANDS])
def test_documented_command_parses(page, args):
    command = _parsing_only_command()
    try:
        command.main(args=list(args), prog_name="rcdm", standalone_mode=False)
    except typer.Exit:
        pass
    except Exception as exc:  # a usage error: the docs and the CLI disagree
        pytest.fail(f"{page}: `rcdm {shlex.join(args)}` does not parse: {exc}")
    for option, value in zip(args, args[1:]):
        if "$" not in value:
            _check_value(option, value)


def _check_value(option: str, value: str) -> None:
    """The names the commands check in their bodies (the parser takes them as text)."""
    from rcdm_cli.attacks.methods import attack_class
    from rcdm_cli.checkpoint.released import get_released
    from rcdm_cli.diffusion.config import PRESETS
    from rcdm_cli.diffusion.respace import space_timesteps
    from rcdm_cli.diffusion.samplers import SAMPLERS
    from rcdm_cli.encoders import get_registry

    if option == "--sampler":
        assert value in SAMPLERS
    elif option == "--preset":
        assert value in PRESETS
    elif option == "--steps" and not value.isdigit():  # a respacing such as ddim25
        space_timesteps(1000, value)
    elif option in ("--checkpoint", "-c") and value.startswith("released:"):
        get_released(value.partition(":")[2])
    elif option in ("--checkpoint", "-c") and value.startswith("init:"):
        assert value.partition(":")[2] in PRESETS
    elif option == "--encoder" and not value.startswith("timm:") and value not in EXAMPLE_PLUGIN_NAMES:
        get_registry().get(value)
    elif option == "--attribute" and value not in EXAMPLE_PLUGIN_NAMES:
        from rcdm_cli.evaluation.attributes import select_attributes

        select_attributes([value])
    elif option in ("--augment", "--augmentation"):
        from rcdm_cli.evaluation.augmentations import AUGMENTATIONS

        assert value in AUGMENTATIONS
    elif option == "--method":
        attack_class(value)
