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


# --- dynamic candidates, asked for by the shell at TAB time ---------------------------


def complete_encoder(incomplete: str) -> list[tuple[str, str]]:
    """Installed encoder names, with ``@WEIGHTS`` variants."""
    try:
        from rcdm_cli.encoders import get_registry

        rows = get_registry().catalog()
    except Exception:  # completion must never fail loudly
        return []
    out = []
    for row in rows:
        name = row["name"].replace(":MODEL", ":")
        out.append((name, row["description"]))
        out += [(f"{name}@{w['name']}", w["description"]) for w in row["weights"][1:]]
    return [(n, h) for n, h in out if n.startswith(incomplete)]


def complete_layer(ctx, incomplete: str) -> list[tuple[str, str]]:
    """Layers of the encoder already on the command line."""
    encoder = (ctx.params or {}).get("encoder")
    if not encoder:
        return [(n, "") for n in ("backbone", "head", "layer3") if n.startswith(incomplete)]
    try:
        from rcdm_cli.encoders import get_registry

        layers, _ = get_registry().layers(encoder)
    except Exception:
        return []
    return [(n, f"{dim}-d: {text}") for n, (dim, text) in layers.items() if n.startswith(incomplete)]


def complete_preset(incomplete: str) -> list[tuple[str, str]]:
    from rcdm_cli.diffusion.config import PRESETS

    return [(n, p.description) for n, p in PRESETS.items() if n.startswith(incomplete)]


def complete_checkpoint(incomplete: str) -> list[tuple[str, str]]:
    """``released:NAME`` and ``init:PRESET``; files are left to the shell."""
    from rcdm_cli.checkpoint.released import RELEASED
    from rcdm_cli.diffusion.config import PRESETS

    names = [(f"released:{n}", c.description) for n, c in RELEASED.items()]
    names += [(f"init:{n}", p.description) for n, p in PRESETS.items()]
    return [(n, h) for n, h in names if n.startswith(incomplete)]
