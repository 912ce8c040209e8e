import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO
from rcdm_cli.cli.completion import SHELLS, completion_script

FOLDER = REPO / "completions"


@pytest.mark.parametrize("shell", list(SHELLS))
def test_checked_in_completion_scripts_are_current(shell):
    assert (FOLDER / SHELLS[shell]).read_text() == completion_script(shell), (
        "regenerate with: python -m rcdm_cli.cli.completion completions"
    )


def test_completion_callback_lists_commands(monkeypatch, capsys):
    from rcdm_cli.cli.app import run

    monkeypatch.setenv("_RCDM_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "rcdm con")
    monkeypatch.setenv("COMP_CWORD", "1")
    with pytest.raises(SystemExit):  # completion mode answers and exits
        run([])
    assert "convert" in capsys.readouterr().out.split()


@pytest.mark.parametrize(
    "words, cword, expected",
    [
        ("rcdm encode x --encoder su", 4, {"supervised", "supervised@v2"}),
        ("rcdm encode x --encoder supervised --layer ", 6, {"backbone", "layer3", "logits"}),
        ("rcdm evaluate probe a b --encoder dino-v", 6, {"dino-vits16", "dino-vitb16"}),
        ("rcdm evaluate attributes x --attribute scene-s", 5, {"scene-shape", "scene-size"}),
        ("rcdm evaluate attributes x --attribute fg", 5, {"fg-x", "fg-y", "fg-scale"}),
        ("rcdm evaluate attributes x --attribute ima", 5, {"image"}),
        ("rcdm evaluate attributes x --augment gr", 5, {"grayscale"}),
        ("rcdm attributes colo", 2, {"colourfulness", "colour-histogram"}),
    ],
)
def test_encoder_names_and_layers_complete_dynamically(monkeypatch, capsys, words, cword, expected):
    from rcdm_cli.cli.app import run

    monkeypatch.setenv("_RCDM_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(cword))
    with pytest.raises(SystemExit):
        run([])
    assert set(capsys.readouterr().out.split()) == expected


def _complete(monkeypatch, capsys, words, cword):
    from rcdm_cli.cli.app import run

    monkeypatch.setenv("_RCDM_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(cword))
    with pytest.raises(SystemExit):
        run([])
    return set(capsys.readouterr().out.split())


def test_encoder_completion_is_cached_until_a_plugin_changes(monkeypatch, capsys):
    import rcdm_cli.cli.completion as completion
    import rcdm_cli.encoders as encoders

    assert "thumbnail" in _complete(monkeypatch, capsys, "rcdm encode x --encoder th", 4)

    # answered from the cache: the registry (every plugin, PyTorch) is not loaded again
    def no_registry():
        raise AssertionError("the registry was loaded")

    monkeypatch.setattr(encoders, "get_registry", no_registry)
    assert _complete(monkeypatch, capsys, "rcdm encode x --encoder th", 4) == {"thumbnail"}
    assert _complete(monkeypatch, capsys, "rcdm encode x --encoder thumbnail --layer ", 6) == {"backbone", "8x8", "2x2"}

    # a changed plugin set (here: a new version) makes the cache stale
    real = completion._plugins_fingerprint
    monkeypatch.setattr(completion, "_plugins_fingerprint", lambda: real() + ["another plugin"])
    loaded = []
    monkeypatch.setattr(encoders, "get_registry", lambda: loaded.append(1) or encoders.registry.get_registry())
    assert "thumbnail" in _complete(monkeypatch, capsys, "rcdm encode x --encoder th", 4)
    assert loaded


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_checked_in_bash_script_completes_in_bash(tmp_path):
    """The script as a user sources it, driven the way bash drives it at TAB."""
    script = f"""
source {FOLDER / 'rcdm.bash'}
complete -p rcdm
COMP_WORDS=(rcdm sample --encoder thu); COMP_CWORD=3
_rcdm_completion rcdm
printf '%s\\n' "${{COMPREPLY[@]}}"
COMP_WORDS=(rcdm evaluate r); COMP_CWORD=2
_rcdm_completion rcdm
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert "complete -o default -F _rcdm_completion rcdm" in lines[0]
    assert lines[1:] == ["thumbnail", "rank", ""]


def test_encoder_completion_works_with_a_read_only_cache(monkeypatch, capsys):
    import rcdm_cli.fileio as fileio
    from rcdm_cli.errors import RcdmError

    def refuse(path, obj):
        raise RcdmError(f"could not write {path}: Read-only file system")

    monkeypatch.setattr(fileio, "write_json", refuse)
    assert "thumbnail" in _complete(monkeypatch, capsys, "rcdm encode x --encoder th", 4)
