"""``rcdm encoders`` (what is installed) and ``rcdm encode`` (images to vectors)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.completion import complete_checkpoint, complete_encoder, complete_layer
from rcdm_cli.cli.console import log, print_json, settings


def encoders(
    name: Optional[str] = typer.Argument(
        None,
        help="Show one encoder in detail (weights, licences, checks, notes, preprocessing); "
        "FAMILY:MODEL (timm:convnext_tiny.fb_in1k) shows that model.",
        autocompletion=complete_encoder,
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout."),
) -> None:
    """List the installed encoders: layers, input, weights and licences, plugin."""
    from rich.console import Console

    from rcdm_cli.encoders import EncoderName, get_registry

    registry = get_registry()
    parsed = EncoderName.parse(name) if name is not None else None
    if parsed is None:
        rows = registry.catalog()
    elif parsed.argument:
        rows = [registry.member(name)]  # one model of a family, described by the family
    else:
        entry = registry.specs.get(parsed.base)
        if entry is None or not entry.spec.family:
            registry.get(name)  # an unknown name (or weights) is an error listing what there is
        rows = [r for r in registry.catalog() if r["name"].split(":")[0] == parsed.base]
    if json_out:
        print_json({"encoders": rows, "failed_plugins": registry.failed})
        return
    if name is not None:
        # lines left whole (the terminal wraps them), so that addresses and paths copy intact
        _details(rows[0], Console(soft_wrap=True))
    else:
        Console().print(_table(rows))  # the listing is the result: stdout
    for plugin, problem in registry.failed.items():
        log.warning("plugin %s failed to load: %s", plugin, problem)


def _short_input(row: dict) -> str:
    """``224 from 256 / bicubic, ImageNet``: the crop, the resize before it, the
    statistics, on three short lines."""
    pre = row["preprocessing"]
    resize = f" from {pre['resize_to']}\n{pre['interpolation']}," if pre["resize"] == "short-side" else "\nadm crop,"
    stats = (pre["mean"], pre["std"])
    if stats == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]):
        norm = "ImageNet"
    elif stats == ([0.5] * 3, [0.5] * 3):
        norm = "[-1, 1]"
    else:
        norm = "own mean/std"
    return f"{pre['size']}{resize}\n{norm}"


def _table(rows: list[dict]):
    """The list, readable at 80 columns: short licence names (the whole statement is
    in the detail view), and cells that fold rather than cut."""
    from rich.table import Table

    table = Table(show_lines=True, caption="* default. `rcdm encoders NAME`: full licences, checks, notes")
    table.add_column("encoder (plugin)", overflow="fold", min_width=16)
    table.add_column("layers", overflow="fold", no_wrap=True)
    table.add_column("input", overflow="fold", no_wrap=True)
    table.add_column("weights, licence", overflow="fold", min_width=12)
    for row in rows:
        layers = "\n".join(
            f"{k} {v['dim']}" + ("*" if k == row["default_layer"] else "") for k, v in row["layers"].items()
        )
        weights = "\n".join(
            f"{w['name']}{'*' if w['default'] else ''} {w['license_short']}" for w in row["weights"]
        )
        table.add_row(
            f"[bold]{row['name']}[/bold] ({row['plugin']})\n{row['description']}",
            layers or "per model",
            _short_input(row) if not row["family"] else "per model",
            weights or ("per model" if row["family"] else "none"),
        )
    return table


def _details(row: dict, console) -> None:
    console.print(f"[bold]{row['name']}[/bold]: {row['description']}  (plugin: {row['plugin']})")
    if row["family"]:
        console.print(f"a family: `rcdm encoders {row['name']}` shows one model's layers, input, weights and licence")
        return
    console.print(f"input: {row['preprocessing_description']}")
    for layer, info in row["layers"].items():
        default = " (default)" if layer == row["default_layer"] else ""
        console.print(f"  layer {layer}{default}: {info['dim']}-d, {info['description']}")
    if not row["weights"]:
        console.print("  weights: none published")
    for w in row["weights"]:
        if row.get("member_of"):  # chosen by the family for this name; no NAME@WEIGHTS
            console.print(f"  weights {w['name']}: {w['description']}")
        else:
            default = " (default)" if w["default"] else ""
            console.print(f"  weights {row['name']}@{w['name']}{default}: {w['description']}")
        # sources without an address: the thumbnail's (nothing to load), shipped files, --weights
        console.print(f"    {w['url'] or 'no download'}")
        console.print(f"    licence: {w['license']}")
        console.print(f"    check: {w['integrity']}")
        if w["preprocessing_description"]:
            console.print(f"    input for these weights: {w['preprocessing_description']}")
        if w["notes"]:
            console.print(f"    {w['notes']}")


def encode(
    images: List[str] = typer.Argument(..., help="Image files, folders, globs, or - to read paths from stdin."),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", "-c",
        help="Compute the representation a model is conditioned on (its encoder, layer, weights and "
        "preprocessing): what `rcdm sample --rep` with that model needs.",
        autocompletion=complete_checkpoint,
    ),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help="Encoder name (see `rcdm encoders`).", autocompletion=complete_encoder),
    layer: Optional[str] = typer.Option(None, "--layer", "-l", help="Layer (default: the encoder's default).", autocompletion=complete_layer),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A local weights file instead of the download."),
    preprocessing: Optional[str] = typer.Option(
        None, "--preprocessing", help="native (default without --checkpoint), or rcdm (224x224 in [-1, 1], as the released models)."
    ),
    output: Path = typer.Option(Path("reps.safetensors"), "--output", "-o", help="Where to write the vectors (.safetensors or .npy)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    json_out: bool = typer.Option(False, "--json", help="Print a summary as JSON on stdout."),
) -> None:
    """Compute representations of images and save them (one row per image).

    The file can be given to `rcdm sample --rep`. A .safetensors file records what
    computed it, and sampling refuses it for a model conditioned on another
    representation; `--checkpoint` computes exactly the one a model needs.
    """
    from rcdm_cli.cli.console import StepProgress, status
    from rcdm_cli.cli.downloads import download_progress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.errors import UsageError
    from rcdm_cli.evaluation.encoding import build_encoder, chosen_layer
    from rcdm_cli.evaluation.representations import (
        check_output, encode_paths, representation_info, write_representations,
    )
    from rcdm_cli.fileio import check_writable
    from rcdm_cli.inputs import expand_inputs
    from rcdm_cli.pipeline.runner import RCDMRun

    check_output(output)
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    if checkpoint is None and encoder is None:
        raise UsageError("give --encoder, or --checkpoint for the representation a model is conditioned on")
    paths = expand_inputs(images)
    device = resolve_device(settings.device)
    if checkpoint is not None:
        run = RCDMRun.prepare(
            checkpoint=checkpoint, encoder=encoder, layer=layer, weights=str(weights) if weights else None,
            preprocessing=preprocessing, device=device, download_progress=download_progress(),
        )
        chosen = run.plan.layer
        check_writable([output], overwrite)
        with status(f"loading the encoder {run.plan.encoder}/{chosen}"):
            model = run.encoder
    else:
        chosen = chosen_layer(encoder, layer)
        check_writable([output], overwrite)
        model = build_encoder(encoder, weights, preprocessing or "native", device, download_progress())
    with StepProgress(f"encoding {len(paths)} image(s) with {model.name}/{chosen}", len(paths)) as bar:
        reps = encode_paths(model, chosen, paths, batch_size, lambda done, total: bar.update(done))
    info = representation_info(model, chosen, paths, weights, checkpoint)
    write_representations(output, reps, info)
    if json_out:
        print_json({"output": str(output), "count": len(paths), "dim": int(reps.shape[1]), **info})
    log.info("wrote %d %d-d representations (%s/%s) to %s", len(paths), reps.shape[1], model.name, chosen, output)
