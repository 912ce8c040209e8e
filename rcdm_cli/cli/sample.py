"""``rcdm sample``: draw images from an RCDM conditioned on images or on vectors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli import __version__
from rcdm_cli.cli.completion import complete_checkpoint, complete_encoder, complete_layer
from rcdm_cli.cli.console import log, print_json, settings
from rcdm_cli.cli.downloads import download_progress
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


# Options shared by the commands that sample (sample, interpolate, arith, attack).
CHECKPOINT = typer.Option(
    None, "--checkpoint", "-c",
    help="released:NAME, init:PRESET, an rcdm checkpoint file or a training run folder "
    "(default: the released model of --encoder/--layer).",
    autocompletion=complete_checkpoint,
)
ENCODER = typer.Option(
    None, "--encoder", "-e", help="Encoder (default: the one the checkpoint was trained on).", autocompletion=complete_encoder
)
LAYER = typer.Option(None, "--layer", "-l", help="Encoder layer (default: the checkpoint's).", autocompletion=complete_layer)
WEIGHTS = typer.Option(None, "--weights", help="A local file of the encoder's weights instead of the download.")
PREPROCESSING = typer.Option(
    None, "--preprocessing", help="native or rcdm, for models whose metadata does not fix it."
)
SAMPLER = typer.Option(
    "auto", "--sampler",
    help="ddpm (ancestral, as the original), ddim, dpm++2m or dpm++3m (ODE solvers). auto: dpm++2m with 8 steps "
    "(quad8) for models trained with rcdm (measured as faithful as the original's 100 steps), ddpm with 100 steps for the "
    "released models.",
)
STEPS = typer.Option(
    "auto", "--steps",
    help="Sampling steps: 100, ddim25 or 10,15,20 (the official respacing syntax), quad15 or logsnr10 (dense near "
    "t = 0). auto: the sampler's measured default.",
)
ETA = typer.Option(None, "--eta", help="DDIM noise (0 = deterministic; DDIM only).")
SEED = typer.Option(0, "--seed", help="Seed of every random stream of the run.")
BATCH = typer.Option(16, "--batch-size", "-b", help="Images per network call.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing output files.")
JSON = typer.Option(False, "--json", help="Print the manifest as JSON on stdout.")
PRECISION = typer.Option(
    "fp32", "--precision",
    help="Network precision: fp32 (as released), bf16 or fp16 (autocast; fp16 on GPUs only). "
    "On CUDA, bf16/fp16 also use channels-last memory and CUDA graphs. The sampler itself stays in fp32.",
)
COMPILE = typer.Option(
    False, "--compile", help="torch.compile the network (slow first call; falls back to eager with a warning if it fails).",
)


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

    from rcdm_cli.cli.common import encode_with_status, sample_with_progress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.imaging import to_pil
    from rcdm_cli.inputs import expand_inputs, load_image
    from rcdm_cli.outputs import SampleLayout, unique_names, write_input
    from rcdm_cli.pipeline.runner import RCDMRun
    from rcdm_cli.pipeline.sampling import SamplingOptions, check_fits_memory, load_noise, resolved_eta, sample_seed
    from rcdm_cli.preprocessing import diffusion_target
    from rcdm_cli.pipeline.conditioning import check_vectors
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
    )
    if reps is not None:
        check_vectors(run.meta, provenance(rep), rep)
    options = run.resolve(SamplingOptions(
        sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision, compile=compile_
    ))
    diffusion = run.check(reps, n, options)
    rows = len(inputs) if inputs else (reps.shape[0] if reps is not None else random_count)
    check_fits_memory(rows * n, run.meta.image_size, f"-n {n} for {rows} input(s)")
    noise_tensor = load_noise(load_tensor(noise, preferred=("noise",)), n, run.meta.image_size) if noise else None
    pictures = [load_image(p) for p in inputs]  # unreadable images fail here, before any work
    if inputs:
        names = unique_names([p.stem for p in inputs])
    else:
        names = [f"rep-{j:03d}" for j in range(reps.shape[0] if reps is not None else random_count)]
    layout = SampleLayout(out, names, n)
    claim(out, "sample")  # one run per folder: a second one started beside it fails here
    check_writable(layout.planned(save_tensors_), overwrite)

    # 2. Representations, then samples; each input's files are written as soon as
    # its samples are complete, so an interrupted run keeps what it finished.
    started = time.perf_counter()
    if inputs:
        reps = encode_with_status(run, pictures, batch_size)
    elif reps is None:
        reps = torch.randn(random_count, run.meta.rep_dim, generator=torch.Generator().manual_seed(seed))
    encode_seconds = time.perf_counter() - started
    shown = [to_pil(diffusion_target(im, run.meta.image_size)) for im in pictures] if pictures else None
    written: dict[int, tuple[list[str], str]] = {}

    def write_row(j: int, row: torch.Tensor) -> None:
        written[j] = write_input(layout, j, row, shown[j] if shown else None)

    def manifest(result=None) -> dict:
        return {
            "command": "sample",
            "rcdm_version": __version__,
            "complete": result is not None,
            "checkpoint": run.checkpoint_info(),
            "encoder": run.encoder_info(),
            "inputs": [str(p) for p in inputs] if inputs else {"rep": rep, "count": int(reps.shape[0])},
            "n": n,
            "image_size": run.meta.image_size,
            "sampling": {
                **options.to_dict(), "eta": resolved_eta(options), "noise": str(noise) if noise else None,
                "network_calls": diffusion.num_timesteps,
            },
            "device": str(run.device),
            "outputs": [
                {"name": names[j], "grid": written[j][1], "samples": written[j][0], "seeds": seeds[j]}
                for j in sorted(written)
            ],
            "tensors": str(layout.tensors_path) if save_tensors_ and result is not None else None,
            "timings": {
                "encode_seconds": round(encode_seconds, 3),
                "sample_seconds": round(result.seconds, 3) if result else None,
                "seconds_per_image": round(result.seconds / (reps.shape[0] * n), 4) if result else None,
                "total_seconds": round(time.perf_counter() - started, 3),
            },
        }

    seeds = [[sample_seed(seed, j, k) for k in range(n)] for j in range(reps.shape[0])]
    try:
        result = sample_with_progress(run, reps, n, options, diffusion.num_timesteps, noise=noise_tensor, on_row=write_row)
    except BaseException:
        if written:  # say what the finished inputs are, and that the run is not whole
            write_json(layout.manifest_path, manifest())
            log.warning(
                "stopped after %d of %d input(s); their files and an incomplete manifest are in %s",
                len(written), len(names), out,
            )
        raise
    if save_tensors_:
        save_tensors(layout.tensors_path, {"samples": result.samples, "reps": reps}, {"rcdm": __version__})
    final = manifest(result)
    write_json(layout.manifest_path, final)
    if json_out:
        print_json(final)
    log.info(
        "wrote %d sample(s) and %d grid(s) to %s in %.1f s; manifest: %s",
        reps.shape[0] * n, len(names), out, result.seconds, layout.manifest_path,
    )
