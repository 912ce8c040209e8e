"""``rcdm sample``: draw images from an RCDM conditioned on representations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from rcdm_cli import __version__
from rcdm_cli.cli.console import StepProgress, log, print_json, settings, status
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.errors import UsageError


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


def sample(
    checkpoint: str = typer.Option(
        ..., "--checkpoint", "-c", help="released:NAME, init:PRESET, or an rcdm .safetensors file."
    ),
    rep: str = typer.Option(
        ...,
        "--rep",
        help="Representation vectors to condition on: a .safetensors/.npy/.pt file (one row per vector), "
        "or random[:K] for K standard-normal vectors.",
    ),
    n: int = typer.Option(16, "-n", "--num-samples", help="Samples per representation."),
    sampler: str = typer.Option("ddpm", "--sampler", help="ddpm (ancestral, as the original) or ddim."),
    steps: str = typer.Option("100", "--steps", help="Sampling steps in the official respacing syntax: 100, ddim25, 10,15,20."),
    eta: Optional[float] = typer.Option(None, "--eta", help="DDIM noise (0 = deterministic; DDIM only)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random stream of the run."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images per network call."),
    noise: Optional[Path] = typer.Option(None, "--noise", help="Initial noise file, n x 3 x H x W or 1 x 3 x H x W."),
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Output folder."),
    save_tensors_: bool = typer.Option(False, "--save-tensors", help="Also write the raw samples in [-1, 1] as safetensors."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
) -> None:
    """Draw samples conditioned on representation vectors.

    Writes every sample as a PNG, one labelled grid per vector, and manifest.json.
    """
    import torch

    from rcdm_cli.checkpoint.hashing import file_sha256
    from rcdm_cli.checkpoint.resolve import resolve_checkpoint
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.outputs import SampleLayout, write_samples
    from rcdm_cli.pipeline.model import RCDMModel
    from rcdm_cli.pipeline.sampling import SamplingOptions, check_request, load_noise, sample_representations
    from rcdm_cli.tensorfile import load_tensor, save_tensors

    random_count = parse_random_rep(rep)
    reps = None
    if random_count is None:
        reps = load_tensor(rep, preferred=("reps", "rep", "representations"))
        if reps.ndim == 1:
            reps = reps[None]
    noise_tensor = load_tensor(noise, preferred=("noise",)) if noise is not None else None
    device = resolve_device(settings.device)

    # Everything that can be checked from the metadata is checked before loading.
    ckpt = resolve_checkpoint(checkpoint, rep_dim=reps.shape[1] if reps is not None else None)
    options = SamplingOptions(sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size)
    diffusion = check_request(ckpt.meta, reps, n, options)
    if noise_tensor is not None:
        load_noise(noise_tensor, n, ckpt.meta.image_size)
    if reps is None:
        reps = torch.randn(random_count, ckpt.meta.rep_dim, generator=torch.Generator().manual_seed(seed))
    names = [f"rep-{j:03d}" for j in range(reps.shape[0])]
    layout = SampleLayout(out, names, n)
    check_writable(layout.planned(save_tensors_), overwrite)

    t0 = time.perf_counter()
    with status(f"loading {checkpoint}"):
        model = RCDMModel.from_checkpoint(ckpt, device, progress=download_progress())
    load_seconds = time.perf_counter() - t0

    total_images = reps.shape[0] * n
    batches = -(-total_images // batch_size)
    with StepProgress(f"sampling {total_images} images", batches * diffusion.num_timesteps) as bar:
        result = sample_representations(
            model,
            reps,
            n,
            options,
            noise=noise_tensor,
            progress=lambda p: bar.update(
                (p.batch - 1) * p.steps + p.step, f"batch {p.batch}/{p.batches}, step {p.step}/{p.steps}"
            ),
        )
    written = write_samples(layout, result.samples)
    if save_tensors_:
        save_tensors(layout.tensors_path, {"samples": result.samples, "reps": reps}, {"rcdm": __version__})

    manifest = {
        "command": "sample",
        "rcdm_version": __version__,
        "checkpoint": {
            "spec": checkpoint,
            "path": str(ckpt.path) if ckpt.path else None,
            "sha256": file_sha256(ckpt.path) if ckpt.path else None,
            "description": ckpt.meta.describe(),
            "source": ckpt.meta.source,
        },
        "encoder": ckpt.meta.encoder.to_dict() if ckpt.meta.encoder else None,
        "representations": {"source": rep, "count": int(reps.shape[0]), "dim": int(reps.shape[1])},
        "n": n,
        "image_size": model.image_size,
        "sampling": {**options.to_dict(), "noise": str(noise) if noise else None, "network_calls": diffusion.num_timesteps},
        "device": str(device),
        "outputs": [
            {"name": name, "grid": written["grids"][j], "samples": written["samples"][j], "seeds": result.seeds[j]}
            for j, name in enumerate(names)
        ],
        "tensors": str(layout.tensors_path) if save_tensors_ else None,
        "timings": {
            "load_seconds": round(load_seconds, 3),
            "sample_seconds": round(result.seconds, 3),
            "seconds_per_image": round(result.seconds / total_images, 4),
        },
    }
    write_json(layout.manifest_path, manifest)
    if json_out:
        print_json(manifest)
    log.info(
        "wrote %d samples (%d grid(s)) to %s in %.1f s; manifest: %s",
        total_images, len(names), out, result.seconds, layout.manifest_path,
    )
