"""``rcdm sample``: draw images from an RCDM conditioned on images or on vectors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli import __version__
from rcdm_cli.cli.completion import complete_checkpoint, complete_encoder, complete_layer
from rcdm_cli.cli.console import StepProgress, log, print_json, settings, status
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
# At most this many samples are held in memory at once: `rcdm sample` draws and writes
# its inputs a part at a time, so a batch job over a million images runs in the
# memory of one part (about 200 MB at 128x128).
STREAM_SAMPLES = 1024
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
GUIDANCE = typer.Option(
    1.0, "--guidance",
    help="Representation guidance W: 1 samples the model as trained; W > 1 pushes the samples towards the "
    "representation (two network calls per step, batched). Needs a model trained with --cond-drop.",
)
WEIGHT_SET = typer.Option(
    None, "--weights-set",
    help="Which weights of a trained run to sample: ema (the moving average; the default) or model (the raw "
    "weights), or a named set such as ema-0.999.", show_default=False,
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
