"""Shell completion scripts for ``completions/``, generated from the Typer app.

Regenerate with ``python -m rcdm_cli.cli.completion completions/``; a test keeps the
checked-in files in sync. The scripts call back into ``rcdm`` for candidates, so new
commands and options complete without regenerating.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHELLS = {"bash": "rcdm.bash", "zsh": "_rcdm", "fish": "rcdm.fish"}


def completion_script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name="rcdm", complete_var="_RCDM_COMPLETE", shell=shell).rstrip("\n") + "\n"


def write_all(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for shell, name in SHELLS.items():
        (folder / name).write_text(completion_script(shell))


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions"))
