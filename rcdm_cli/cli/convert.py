"""``rcdm convert``: import an official-layout RCDM state dict into an rcdm checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rcdm_cli.cli.console import log, print_json
from rcdm_cli.cli.downloads import download_progress


def convert(
    source: str = typer.Argument(
        ..., help="An official .pt/.pth/.safetensors state dict, or released:NAME."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="The rcdm checkpoint to write (.safetensors)."),
    flags: Optional[str] = typer.Option(
        None, "--flags", help="The official model and diffusion flags the weights were trained with."
    ),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="A preset instead of --flags (default when neither is given: rcdm-128)."
    ),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="The encoder whose representation the model was trained on."),
    layer: Optional[str] = typer.Option(None, "--layer", help="The encoder layer: backbone (or trunk) or head."),
    rep_dim: Optional[int] = typer.Option(None, "--rep-dim", help="Check the representation width against this."),
    dtype: str = typer.Option("float32", "--dtype", help="Store weights as float32, float16 or bfloat16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Import official RCDM weights as an rcdm checkpoint.

    The state dict is checked key by key against the configuration (--flags or
    --preset) and written with its metadata: architecture, diffusion settings, and the
    encoder and layer it was trained on.
    """
    from rcdm_cli.checkpoint.convert import convert_official, installed_layer_dims
    from rcdm_cli.fileio import check_writable

    check_writable([output], overwrite)
    result = convert_official(
        source,
        output,
        flags=flags,
        preset=preset,
        encoder=encoder,
        layer=layer,
        rep_dim=rep_dim,
        dtype=dtype,
        progress=download_progress(),
        layer_dims=installed_layer_dims,
    )
    if json_out:
        print_json(result)
    log.info("wrote %s: %s, %d tensors", output, result["description"], result["tensors"])
