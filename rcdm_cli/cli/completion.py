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


def _plugins_fingerprint() -> list:
    """What the encoder catalogue depends on: rcdm's version and each installed plugin
    entry point, with its distribution's version and its module file's mtime (so that
    an editable install's edits count). Cheap: nothing heavy is imported."""
    import importlib.util
    from importlib import metadata

    from rcdm_cli import __version__

    key: list = [__version__]
    # the group is rcdm_cli.encoders.hooks.ENTRY_POINT_GROUP; importing it would load PyTorch
    for ep in sorted(metadata.entry_points(group="rcdm"), key=lambda e: (e.name, e.value)):
        dist = getattr(ep, "dist", None)
        try:
            origin = importlib.util.find_spec(ep.module).origin
            mtime = Path(origin).stat().st_mtime_ns if origin else None
        except Exception:
            mtime = None
        key.append([ep.name, ep.value, dist.name if dist else None, dist.version if dist else None, mtime])
    return key


def _cached(name: str, compute) -> list[dict]:
    """``compute()`` (which imports every plugin and PyTorch: seconds per TAB), kept
    under ``RCDM_HOME`` and recomputed whenever an installed plugin changes."""
    import json

    from rcdm_cli.download_cache import cache_path
    from rcdm_cli.errors import RcdmError
    from rcdm_cli.fileio import write_json

    key = _plugins_fingerprint()
    path = cache_path("completion", f"{name}.json")
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached[name]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    rows = compute()
    try:
        write_json(path, {"key": key, name: rows})
    except (OSError, RcdmError):  # a read-only cache only costs speed
        pass
    return rows


def encoder_catalog() -> list[dict]:
    """Encoder names, weights and layers for completion."""

    def compute() -> list[dict]:
        from rcdm_cli.encoders import get_registry

        return [
            {
                "name": row["name"],
                "description": row["description"],
                "family": row["family"],
                "weights": [[w["name"], w["description"]] for w in row["weights"]],
                "layers": {k: [v["dim"], v["description"]] for k, v in row["layers"].items()},
            }
            for row in get_registry().catalog()
        ]

    return _cached("encoders", compute)


def attribute_catalog() -> list[list[str]]:
    """Attribute names and group names, each with a description, for completion."""

    def compute() -> list[list[str]]:
        from rcdm_cli.encoders import get_registry
        from rcdm_cli.encoders.attributes import GROUPS_DOC

        entries = get_registry().attributes
        groups = sorted({e.spec.group for e in entries.values()})
        return [[n, e.spec.description] for n, e in entries.items()] + [
            [g, f"group: {GROUPS_DOC.get(g, 'every attribute of this group')}"] for g in groups if g not in entries
        ]

    return _cached("attributes", compute)


def complete_encoder(incomplete: str) -> list[tuple[str, str]]:
    """Installed encoder names, with ``@WEIGHTS`` variants."""
    try:
        rows = encoder_catalog()
    except Exception:  # completion must never fail loudly
        return []
    out = []
    for row in rows:
        name = row["name"].replace(":MODEL", ":")
        out.append((name, row["description"]))
        out += [(f"{name}@{w}", text) for w, text in row["weights"][1:]]
    return [(n, h) for n, h in out if n.startswith(incomplete)]


def complete_layer(ctx, incomplete: str) -> list[tuple[str, str]]:
    """Layers of the encoder already on the command line."""
    encoder = (ctx.params or {}).get("encoder")
    if not encoder:
        return [(n, "") for n in ("backbone", "head", "layer3") if n.startswith(incomplete)]
    try:
        base = encoder.partition("@")[0].partition(":")[0]  # NAME[:MODEL][@WEIGHTS]
        row = next((r for r in encoder_catalog() if r["name"] == base and not r["family"]), None)
        if row is not None:
            layers = {n: tuple(v) for n, v in row["layers"].items()}
        else:  # a family member (timm:MODEL): its layers come from the model
            from rcdm_cli.encoders import get_registry

            layers = get_registry().describe(encoder).layers
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


def complete_attribute(incomplete: str) -> list[tuple[str, str]]:
    """Installed attribute names and their groups."""
    try:
        rows = attribute_catalog()
    except Exception:  # completion must never fail loudly
        return []
    return [(n, h) for n, h in rows if n.startswith(incomplete)]


def complete_augmentation(incomplete: str) -> list[tuple[str, str]]:
    from rcdm_cli.evaluation.augmentations import AUGMENTATIONS

    return [(n, a.description) for n, a in AUGMENTATIONS.items() if n.startswith(incomplete)]
