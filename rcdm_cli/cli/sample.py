"""``rcdm sample``: draw images from an RCDM conditioned on images or on vectors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli import __version__
from rcdm_cli.cli.console import StepProgress, log, print_json, settings, status
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


def parse_random_rep(spec: str) -> int | None:
    """``random`` or ``random:K``: K standard-normal representation vectors."""
    if spec == "random":
        return 1
    if spec.startswith("random:"):
        try:
            count = int(spec[len("random:"):])
        except ValueError:
            count = 0
        if count <= 0:
            raise UsageError(f"--rep {spec}: expected random:K with K a positive integer")
        return count
    return None


# At most this many samples are held in memory at once: `rcdm sample` draws and writes
# its inputs a part at a time, so a batch job over a million images runs in the
# memory of one part (about 200 MB at 128x128).
STREAM_SAMPLES = 1024


def sample(
    images: Optional[List[str]] = typer.Argument(
        None, help="Conditioning images: files, folders, globs, or - to read paths from stdin."
    ),
    checkpoint: Optional[str] = CHECKPOINT,
    encoder: Optional[str] = ENCODER,
    layer: Optional[str] = LAYER,
    weights: Optional[Path] = WEIGHTS,
    preprocessing: Optional[str] = PREPROCESSING,
    rep: Optional[str] = typer.Option(
        None,
        "--rep",
        help="Condition on vectors instead of images: a .safetensors/.npy/.pt file (one row per vector), "
        "or random[:K] for K standard-normal vectors.",
    ),
    n: int = typer.Option(16, "-n", "--num-samples", help="Samples per input."),
    sampler: str = SAMPLER,
    steps: str = STEPS,
    eta: Optional[float] = ETA,
    seed: int = SEED,
    batch_size: int = BATCH,
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    guidance: float = GUIDANCE,
    weight_set: Optional[str] = WEIGHT_SET,
    noise: Optional[Path] = typer.Option(None, "--noise", help="Initial noise file, n x 3 x H x W or 1 x 3 x H x W."),
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Output folder."),
    save_tensors_: bool = typer.Option(False, "--save-tensors", help="Also write the raw samples in [-1, 1] as safetensors."),
    overwrite: bool = OVERWRITE,
    json_out: bool = JSON,
) -> None:
    """Draw samples conditioned on the representations of images (or on vectors).

    For each input: every sample as a PNG, a labelled grid (the input first), and a
    manifest.json for the whole run.
    """
    import torch

    from rcdm_cli.cli.common import warn_if_ignored
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.imaging import to_pil
    from rcdm_cli.inputs import check_image, expand_inputs, load_image
    from rcdm_cli.outputs import SampleLayout, unique_names, write_input
    from rcdm_cli.pipeline.conditioning import check_vectors
    from rcdm_cli.pipeline.runner import RCDMRun
    from rcdm_cli.pipeline.sampling import SamplingOptions, check_fits_memory, load_noise, resolved_eta, sample_seed
    from rcdm_cli.preprocessing import diffusion_target
    from rcdm_cli.tensorfile import load_tensor, provenance, save_tensors

    if images and rep:
        raise UsageError("give conditioning images or --rep, not both")
    if not images and not rep:
        raise UsageError("give conditioning images (files, folders, globs or -) or --rep")
    if rep and (encoder or layer or weights or preprocessing):
        raise UsageError("--encoder, --layer, --weights and --preprocessing apply to image inputs, not to --rep")

    # 1. Everything that can be checked without loading weights is checked first.
    inputs = expand_inputs(images) if images else []
    random_count = parse_random_rep(rep) if rep else None
    reps = None
    if rep and random_count is None:
        reps = load_tensor(rep, preferred=("reps", "rep", "representations"))
        reps = reps[None] if reps.ndim == 1 else reps
    run = RCDMRun.prepare(
        checkpoint=checkpoint, encoder=encoder, layer=layer, weights=weights, preprocessing=preprocessing,
        device=resolve_device(settings.device), images=bool(inputs),
        rep_dim=reps.shape[1] if reps is not None else None, download_progress=download_progress(),
        weight_set=weight_set,
    )
    if reps is not None:
        check_vectors(run.meta, provenance(rep), rep)
    options = run.resolve(SamplingOptions(
        sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision, compile=compile_, guidance=guidance,
    ))
    diffusion = run.check(reps, n, options)
    rows = len(inputs) if inputs else (reps.shape[0] if reps is not None else random_count)
    # Samples are drawn and written a part at a time (STREAM_SAMPLES at most), so that
    # a batch job of a million inputs holds one part in memory; --save-tensors keeps
    # them all and so needs them to fit.
    per_part = rows if save_tensors_ else max(1, min(rows, STREAM_SAMPLES // n))
    check_fits_memory(per_part * n, run.meta.image_size, f"-n {n} for {per_part} input(s)")
    noise_tensor = load_noise(load_tensor(noise, preferred=("noise",)), n, run.meta.image_size) if noise else None
    for path in inputs:  # unreadable images fail here, before any work (their headers; pixels as they are read)
        check_image(path)
    if inputs:
        names = unique_names([p.stem for p in inputs])
    else:
        names = [f"rep-{j:03d}" for j in range(rows)]
    layout = SampleLayout(out, names, n)
    claim(out, "sample")  # one run per folder: a second one started beside it fails here
    check_writable(layout.planned(save_tensors_), overwrite)

    # 2. Representations, then samples, a part at a time; each input's files are
    # written as soon as its samples are complete, so an interrupted run keeps what
    # it finished.
    started = time.perf_counter()
    if reps is None and not inputs:
        reps = torch.randn(random_count, run.meta.rep_dim, generator=torch.Generator().manual_seed(seed))
    written: set[int] = set()  # inputs whose files are complete (their paths follow from the layout)
    timings = {"encode_seconds": 0.0, "sample_seconds": 0.0}

    def manifest(complete: bool) -> dict:
        return {
            "command": "sample",
            "rcdm_version": __version__,
            "complete": complete,
            "checkpoint": run.checkpoint_info(),
            "encoder": run.encoder_info(),
            "inputs": [str(p) for p in inputs] if inputs else {"rep": rep, "count": rows},
            "n": n,
            "image_size": run.meta.image_size,
            "sampling": {
                **options.to_dict(), "eta": resolved_eta(options), "noise": str(noise) if noise else None,
                "network_calls": diffusion.num_timesteps,
            },
            "device": str(run.device),
            "outputs": [
                {
                    "name": names[j], "grid": str(layout.grid_path(j)),
                    "samples": [str(layout.sample_path(j, k)) for k in range(n)],
                    "seeds": [sample_seed(seed, j, k) for k in range(n)],
                }
                for j in sorted(written)
            ],
            "tensors": str(layout.tensors_path) if save_tensors_ and complete else None,
            "timings": {
                "encode_seconds": round(timings["encode_seconds"], 3),
                "sample_seconds": round(timings["sample_seconds"], 3) if complete else None,
                "seconds_per_image": round(timings["sample_seconds"] / (rows * n), 4) if complete else None,
                "total_seconds": round(time.perf_counter() - started, 3),
            },
        }

    with status(f"loading {run.spec}"):
        run.model  # noqa: B018 - load (and download) before the progress bar starts
    if inputs:
        with status(f"loading the encoder {run.plan.encoder}/{run.plan.layer}"):
            run.encoder  # noqa: B018 - likewise: images are encoded a part at a time under the bar
    parts = [(a, min(rows, a + per_part)) for a in range(0, rows, per_part)]
    batches = [-(-(b - a) * n // options.batch_size) for a, b in parts]
    steps_total = sum(batches) * diffusion.num_timesteps
    try:
        with StepProgress(f"sampling {rows * n} images", steps_total) as bar:
            for (a, b), done_before in zip(parts, [sum(batches[:i]) for i in range(len(parts))]):
                if inputs:
                    pictures = [load_image(p) for p in inputs[a:b]]
                    encode_start = time.perf_counter()
                    part_reps = run.encode(pictures, batch_size)
                    timings["encode_seconds"] += time.perf_counter() - encode_start
                    shown = [to_pil(diffusion_target(im, run.meta.image_size)) for im in pictures]
                else:
                    part_reps, shown = reps[a:b], None
                if a == 0:
                    warn_if_ignored(run, part_reps, options)

                def write_row(j: int, row: torch.Tensor, a=a, shown=shown) -> None:
                    write_input(layout, a + j, row, shown[j] if shown else None)
                    written.add(a + j)

                def report(p, done_before=done_before, a=a, b=b) -> None:
                    bar.update(
                        (done_before + p.batch - 1) * p.steps + p.step,
                        f"inputs {a + 1}-{b} of {rows}, batch {p.batch}/{p.batches}, step {p.step}/{p.steps}",
                    )

                result = run.sample(part_reps, n, options, noise=noise_tensor, on_row=write_row, first_row=a, progress=report)
                timings["sample_seconds"] += result.seconds
    except BaseException:
        if written:  # say what the finished inputs are, and that the run is not whole
            write_json(layout.manifest_path, manifest(False))
            log.warning(
                "stopped after %d of %d input(s); their files and an incomplete manifest are in %s",
                len(written), len(names), out,
            )
        raise
    if save_tensors_:  # one part: every sample is in this last result
        all_reps = part_reps if inputs else reps
        save_tensors(layout.tensors_path, {"samples": result.samples, "reps": all_reps}, {"rcdm": __version__})
    final = manifest(True)
    write_json(layout.manifest_path, final)
    if json_out:
        print_json(final)
    log.info(
        "wrote %d sample(s) and %d grid(s) to %s in %.1f s; manifest: %s",
        rows * n, len(names), out, timings["sample_seconds"], layout.manifest_path,
    )
