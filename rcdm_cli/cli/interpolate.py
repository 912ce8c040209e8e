"""``rcdm interpolate``: walk from one image's representation to another's."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rcdm_cli import __version__
from rcdm_cli.cli.console import log, print_json, settings
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.cli.options import (
    BATCH,
    CHECKPOINT,
    COMPILE,
    ENCODER,
    ETA,
    GUIDANCE,
    JSON,
    LAYER,
    OVERWRITE,
    PRECISION,
    PREPROCESSING,
    SAMPLER,
    SEED,
    STEPS,
    WEIGHT_SET,
    WEIGHTS,
)
from rcdm_cli.errors import UsageError
from rcdm_cli.folderlock import claim


def interpolate(
    first: str = typer.Argument(..., help="The image at t = 0."),
    second: str = typer.Argument(..., help="The image at t = 1."),
    frames: int = typer.Option(8, "--frames", "-f", help="Points on the path, both ends included."),
    mode: str = typer.Option("lerp", "--mode", help="lerp (straight line) or slerp (great circle, norm interpolated)."),
    same_noise: bool = typer.Option(
        True, "--same-noise/--new-noise", help="One noise for every frame (only the representation changes), or fresh noise per frame."
    ),
    n: int = typer.Option(1, "-n", "--rows", help="Rows of frames, each with its own noise."),
    animation: Optional[str] = typer.Option(None, "--animation", help="Also write an animated gif or webp of the first row."),
    checkpoint: Optional[str] = CHECKPOINT,
    encoder: Optional[str] = ENCODER,
    layer: Optional[str] = LAYER,
    weights: Optional[Path] = WEIGHTS,
    preprocessing: Optional[str] = PREPROCESSING,
    sampler: str = SAMPLER,
    steps: str = STEPS,
    eta: Optional[float] = ETA,
    seed: int = SEED,
    batch_size: int = BATCH,
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    guidance: float = GUIDANCE,
    weight_set: Optional[str] = WEIGHT_SET,
    out: Path = typer.Option(Path("interpolation"), "--out", "-o", help="Output folder."),
    overwrite: bool = OVERWRITE,
    json_out: bool = JSON,
) -> None:
    """Sample along the path between two images' representations.

    Writes every frame, a strip with the two end images around the frames, and a
    manifest.
    """
    from rcdm_cli.cli.common import encode_with_status, sample_with_progress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.imaging import to_pil
    from rcdm_cli.inputs import expand_inputs, load_image
    from rcdm_cli.outputs import StripLayout, write_strip
    from rcdm_cli.pipeline.representations import interpolate as make_path
    from rcdm_cli.pipeline.representations import interpolation_weights
    from rcdm_cli.pipeline.runner import RCDMRun
    from rcdm_cli.pipeline.sampling import SamplingOptions, check_fits_memory, resolved_eta
    from rcdm_cli.preprocessing import diffusion_target

    if animation not in (None, "gif", "webp"):
        raise UsageError(f"--animation must be gif or webp, got {animation!r}")
    if n <= 0:
        raise UsageError(f"--rows must be positive, got {n}")
    if mode not in ("lerp", "slerp"):
        raise UsageError(f"unknown interpolation mode {mode!r}; choose lerp or slerp")
    positions = interpolation_weights(frames).tolist()
    paths = [expand_inputs([first]), expand_inputs([second])]
    if any(len(p) != 1 for p in paths):
        raise UsageError("interpolate takes exactly two image files (not folders or globs matching several)")
    run = RCDMRun.prepare(
        checkpoint=checkpoint, encoder=encoder, layer=layer, weights=weights, preprocessing=preprocessing,
        device=resolve_device(settings.device), download_progress=download_progress(), weight_set=weight_set,
    )
    options = run.resolve(SamplingOptions(
        sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision, compile=compile_, guidance=guidance,
    ))
    diffusion = run.check(None, n, options)
    check_fits_memory(frames * n, run.meta.image_size, f"--frames {frames} x --rows {n}")
    pictures = [load_image(p[0]) for p in paths]
    layout = StripLayout(out, frames, n, animation)
    claim(out, "interpolate")  # one run per folder: a second one started beside it fails here
    check_writable(layout.planned(), overwrite)

    ends = encode_with_status(run, pictures, batch_size)
    reps = make_path(ends[0], ends[1], frames, mode)
    result = sample_with_progress(run, reps, n, options, diffusion.num_timesteps, same_noise=same_noise)
    shown = tuple(to_pil(diffusion_target(im, run.meta.image_size)) for im in pictures)
    written = write_strip(layout, result.samples, shown, positions)
    manifest = {
        "command": "interpolate",
        "rcdm_version": __version__,
        "inputs": [str(paths[0][0]), str(paths[1][0])],
        "checkpoint": run.checkpoint_info(),
        "encoder": run.encoder_info(),
        "mode": mode,
        "positions": positions,
        "same_noise": same_noise,
        "rows": n,
        "sampling": {**options.to_dict(), "eta": resolved_eta(options), "network_calls": diffusion.num_timesteps},
        "device": str(run.device),
        "outputs": written,
        "seeds": result.seeds if not same_noise else result.seeds[0],
        "timings": {"sample_seconds": round(result.seconds, 3)},
    }
    write_json(layout.manifest_path, manifest)
    if json_out:
        print_json(manifest)
    log.info("wrote %d frames x %d row(s) and %s; manifest: %s", frames, n, layout.strip_path, layout.manifest_path)
