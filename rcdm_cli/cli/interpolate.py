"""``rcdm interpolate``: walk from one image's representation to another's."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rcdm_cli.cli.console import print_json
from rcdm_cli.cli.options import JSON, OVERWRITE, ModelChoice, SamplingChoice, model_and_sampling
from rcdm_cli.errors import UsageError
from rcdm_cli.folderlock import claim


@model_and_sampling
def interpolate(
    first: str = typer.Argument(..., help="The image at t = 0."),
    second: str = typer.Argument(..., help="The image at t = 1."),
    frames: int = typer.Option(8, "--frames", "-f", help="Points on the path, both ends included."),
    mode: str = typer.Option("lerp", "--mode", help="lerp (straight line) or slerp (great circle, norm interpolated)."),
    same_noise: bool = typer.Option(
        True, "--same-noise/--new-noise", help="One noise for every frame (only the representation changes), or fresh noise per frame."
    ),
    n: int = typer.Option(
        1, "-n", "--num-samples", help="Samples per point on the path: a row of frames each, with its own noise."
    ),
    animation: Optional[str] = typer.Option(None, "--animation", help="Also write an animated gif or webp of the first row."),
    model: ModelChoice = None,
    sampling: SamplingChoice = None,
    out: Path = typer.Option(Path("interpolation"), "--out", "-o", help="Output folder."),
    overwrite: bool = OVERWRITE,
    json_out: bool = JSON,
) -> None:
    """Sample along the path between two images' representations.

    Writes every frame, a strip with the two end images around the frames (a row
    per sample), and a manifest.
    """
    from rcdm_cli.cli.common import encode_with_status, prepare_run, report_written, sample_with_progress
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.inputs import expand_inputs, load_image
    from rcdm_cli.outputs import StripLayout
    from rcdm_cli.pipeline.interpolation import Interpolation

    if animation not in (None, "gif", "webp"):
        raise UsageError(f"--animation must be gif or webp, got {animation!r}")
    paths = [expand_inputs([first]), expand_inputs([second])]
    if any(len(p) != 1 for p in paths):
        raise UsageError("interpolate takes exactly two image files (not folders or globs matching several)")
    walk = Interpolation((paths[0][0], paths[1][0]), frames, mode, same_noise, n)
    run, options, diffusion = prepare_run(model, sampling, n)
    walk.check(run.meta.image_size)
    pictures = [load_image(p) for p in walk.inputs]
    layout = StripLayout(out, frames, n, animation)
    claim(out, "interpolate")  # one run per folder: a second one started beside it fails here
    check_writable(layout.planned(), overwrite)

    ends = encode_with_status(run, pictures, options.batch_size)
    result = sample_with_progress(run, walk.path(ends), n, options, diffusion.num_timesteps, same_noise=same_noise)
    manifest = walk.write(layout, run, options, diffusion.num_timesteps, pictures, result)
    write_json(layout.manifest_path, manifest)
    if json_out:
        print_json(manifest)
    report_written(f"{frames} frames x {n} sample(s), a strip", out, result.seconds, layout.manifest_path)
