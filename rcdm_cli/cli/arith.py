"""``rcdm arith``: arithmetic on representations, and the paper's attribute transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rcdm_cli.cli.console import log, print_json
from rcdm_cli.cli.options import JSON, OVERWRITE, ModelChoice, SamplingChoice, model_and_sampling
from rcdm_cli.errors import UsageError
from rcdm_cli.folderlock import claim


@model_and_sampling
def arith(
    expression: Optional[str] = typer.Argument(
        None, help="e.g. \"a.jpg - b.jpg + c.jpg\", \"0.5*(x.jpg + y.jpg)\", quoted paths for spaces."
    ),
    rescale: bool = typer.Option(False, "--rescale", help="Scale the result to the operands' mean norm."),
    attribute_from: Optional[Path] = typer.Option(None, "--attribute-from", help="Attribute transfer: the image whose attributes move."),
    neighbors: Optional[Path] = typer.Option(None, "--neighbors", help="Attribute transfer: a folder of images like it."),
    target: Optional[Path] = typer.Option(None, "--target", help="Attribute transfer: the image that receives them."),
    k: int = typer.Option(20, "--k", help="Nearest neighbours to compare with."),
    n_common: int = typer.Option(14, "--n-common", help="A dimension is shared when active in more than this many neighbours."),
    n: int = typer.Option(8, "-n", "--num-samples", help="Samples per representation."),
    model: ModelChoice = None,
    sampling: SamplingChoice = None,
    out: Path = typer.Option(Path("arith"), "--out", "-o", help="Output folder."),
    overwrite: bool = OVERWRITE,
    json_out: bool = JSON,
) -> None:
    """Sample from a combination of image representations.

    With --attribute-from/--neighbors/--target instead of an expression: the paper's
    attribute transfer. The dimensions an image shares with its nearest neighbours
    are replaced by the target's.
    """
    from rcdm_cli.cli.common import encode_with_status, prepare_run, report_written, sample_with_progress
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.inputs import load_image
    from rcdm_cli.outputs import SampleLayout
    from rcdm_cli.pipeline.arithmetic import write_arith

    # Parse and check every input before loading anything.
    recipe = _recipe(expression, rescale, attribute_from, neighbors, target, k, n_common)
    run, options, diffusion = prepare_run(model, sampling, n)
    pictures = [load_image(p) for p in recipe.operands]
    recipe.check()
    layout = SampleLayout(out, recipe.names, n, overview=True)
    claim(out, "arith")  # one run per folder: a second one started beside it fails here
    check_writable(layout.planned(False), overwrite)

    def encode(images):
        return encode_with_status(run, images, options.batch_size)

    reps = recipe.representations(encode(pictures), encode, options.batch_size)
    if getattr(recipe, "replaces_everything", False):
        log.warning(
            "every dimension is active in more than %d of the %d neighbours (a representation without zeros, "
            "such as a projector head's or a ViT's): the transfer replaces the whole representation", n_common, k,
        )
    result = sample_with_progress(run, reps, n, options, diffusion.num_timesteps, same_noise=True)
    manifest = write_arith(layout, recipe, run, options, diffusion.num_timesteps, pictures, result)
    write_json(layout.manifest_path, manifest)
    if json_out:
        print_json(manifest)
    report_written(
        f"{n} sample(s) of each of {len(recipe.names)} representation(s), their grids and an overview", out,
        result.seconds, layout.manifest_path,
    )


def _recipe(expression, rescale, attribute_from, neighbors, target, k: int, n_common: int):
    """What to sample: an expression, or the attribute transfer (all three of its
    options), never both."""
    from rcdm_cli.pipeline.arithmetic import AttributeTransfer, Combination

    transfer = any(v is not None for v in (attribute_from, neighbors, target))
    if transfer and expression:
        raise UsageError("give an expression or --attribute-from/--neighbors/--target, not both")
    if not transfer and not expression:
        raise UsageError("give an expression such as \"a.jpg - b.jpg + c.jpg\" (or --attribute-from/--neighbors/--target)")
    if transfer and None in (attribute_from, neighbors, target):
        raise UsageError("attribute transfer needs all of --attribute-from, --neighbors and --target")
    if transfer and rescale:
        raise UsageError("--rescale applies to expressions; attribute transfer keeps the representations' own scale")
    return AttributeTransfer(attribute_from, neighbors, target, k, n_common) if transfer else Combination(expression, rescale)
