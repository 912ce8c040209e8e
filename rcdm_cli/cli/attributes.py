"""``rcdm attributes``: the visual attributes installed, which ``rcdm evaluate
attributes`` (:mod:`rcdm_cli.cli.evaluate.attributes`) measures."""

from __future__ import annotations

from typing import Optional

import typer

from rcdm_cli.cli.completion import complete_attribute
from rcdm_cli.cli.console import log, print_json


def attributes(
    name: Optional[str] = typer.Argument(None, help="Show one attribute's formula.", autocompletion=complete_attribute),
    json_out: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout."),
) -> None:
    """List the installed visual attributes that `rcdm evaluate attributes` measures:
    group, kind, whether measured by default, plugin."""
    from rich.console import Console
    from rich.table import Table

    from rcdm_cli.encoders import get_registry

    registry = get_registry()
    entries = registry.attributes
    if name is not None:
        registry.attribute(name)  # an unknown name is an error listing what there is
        entries = {name: entries[name]}
    rows = [
        {
            "name": n, "group": e.spec.group, "kind": e.spec.kind, "width": e.spec.width, "default": e.spec.default,
            "categories": list(e.spec.categories), "components": list(e.spec.components),
            "description": e.spec.description, "formula": e.spec.formula, "plugin": e.plugin,
        }
        for n, e in entries.items()
    ]
    if json_out:
        print_json({"attributes": rows, "failed_plugins": registry.failed})
        return
    console = Console(soft_wrap=name is not None)
    if name is not None:
        row = rows[0]
        console.print(f"{row['name']}: {row['description']}", markup=False, highlight=False)
        kind = row["kind"] + (f" ({', '.join(row['categories'])})" if row["categories"] else "")
        kind += f", {row['width']} values" if row["kind"] == "vector" else ""
        console.print(f"group {row['group']}, {kind}, {'measured' if row['default'] else 'not measured'} by default; "
                      f"plugin {row['plugin']}", markup=False, highlight=False)
        if row["formula"]:
            console.print("\n" + row["formula"], markup=False, highlight=False)
    else:
        table = Table(title="attributes (rcdm evaluate attributes --attribute NAME or GROUP)")
        for column in ("name", "group", "kind", "default", "description"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row["name"], row["group"], row["kind"], "yes" if row["default"] else "", row["description"])
        console.print(table)
    for plugin, problem in registry.failed.items():
        log.warning("plugin %s failed to load: %s", plugin, problem)
