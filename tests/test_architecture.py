"""docs/architecture.md draws the package as layers, one line per package or shared
module, top to bottom. These tests read that drawing and the real imports (module
level and inside functions alike), so the document cannot drift from the code: every
part of the package is drawn, and every import points down the drawing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "rcdm_cli"
DOC = REPO / "docs" / "architecture.md"


def drawn_layers() -> list[str]:
    """The parts named at the start of each line of the document's first text block,
    in order: ``cli`` for ``rcdm_cli/cli/``, ``errors`` for ``rcdm_cli/errors.py``,
    ``plugins`` for ``plugins/``."""
    block = re.search(r"```text\n(.*?)```", DOC.read_text(), re.S).group(1)
    names = []
    for line in block.splitlines():
        match = re.match(r"(?:rcdm_cli/)?(\w+)(?:/|\.py)\s", line + " ")
        if match:
            names.append(match.group(1))
    return names


def part_of(module: str) -> str | None:
    """The drawn part a dotted module name belongs to (``rcdm_cli.cli.sample`` ->
    ``cli``), or None outside the package or for the package's own ``__init__``."""
    pieces = module.split(".")
    if pieces[0] != "rcdm_cli" or len(pieces) < 2:
        return None
    return pieces[1]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "rcdm_cli":  # `from rcdm_cli import fileio` names a module
                found.update(f"rcdm_cli.{alias.name}" for alias in node.names)
    return found


def source_parts() -> dict[str, list[Path]]:
    parts: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts == ("__init__.py",) or rel.parts == ("__main__.py",):
            continue
        name = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        parts.setdefault(name, []).append(path)
    parts["plugins"] = sorted((REPO / "plugins").glob("*.py"))
    return parts


def test_every_package_and_shared_module_is_drawn_once():
    drawn = drawn_layers()
    assert len(drawn) == len(set(drawn)), f"drawn twice: {sorted({n for n in drawn if drawn.count(n) > 1})}"
    assert sorted(drawn) == sorted(source_parts()), (
        f"not drawn: {sorted(set(source_parts()) - set(drawn))}; drawn but absent: {sorted(set(drawn) - set(source_parts()))}"
    )


def test_every_import_points_down_the_drawing():
    order = {name: i for i, name in enumerate(drawn_layers())}
    upward = []
    for name, paths in source_parts().items():
        for path in paths:
            for module in imports(path):
                target = part_of(module)
                if target is None or target == name or target not in order or name not in order:
                    continue
                if order[target] < order[name]:
                    upward.append(f"{path.relative_to(REPO)} imports {module} (drawn above {name})")
    assert not upward, "\n".join(upward)


def test_the_engine_and_the_library_do_not_import_the_command_line():
    """Only the commands and the entry point speak typer and rich."""
    offenders = []
    for name, paths in source_parts().items():
        if name == "cli":
            continue
        for path in paths:
            bad = {m for m in imports(path) if m.split(".")[0] in ("typer", "rich", "click")}
            if bad:
                offenders.append(f"{path.relative_to(REPO)}: {', '.join(sorted(bad))}")
    assert not offenders, "\n".join(offenders)


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists the packages by name: a new sub-package left out installs
    as a missing module, which an editable install (as tests run) never shows."""
    block = re.search(r"^packages = \[(.*?)\]", (REPO / "pyproject.toml").read_text(), re.S | re.M).group(1)
    listed = set(re.findall(r'"([\w.]+)"', block))
    found = {".".join(path.parent.relative_to(REPO).parts) for path in PACKAGE.rglob("__init__.py")} | {"rcdm_plugins"}
    assert found == listed, f"not shipped: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
