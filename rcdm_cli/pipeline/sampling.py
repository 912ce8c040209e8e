"""Drawing samples from representations.

Every sample (conditioning vector ``j``, sample ``k``) has its own random stream,
seeded from ``(seed, j, k)``: a sample does not change when the batch size, the
number of samples or the other inputs of the run change, and a seed means the same
noise on a CPU and on a GPU.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from rcdm_cli.acceleration import PRECISIONS, Speed, check_precision, exact_float32
from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.diffusion.gaussian import GaussianDiffusion, randn
from rcdm_cli.diffusion.samplers import get_sampler
from rcdm_cli.errors import UsageError
from rcdm_cli.pipeline.model import RCDMModel
from rcdm_cli.seeding import stream_seed


# "auto" (the default of --sampler and --steps) resolves per model; see default_sampling.
AUTO = "auto"
# The original configuration: 100 ancestral steps.
ORIGINAL = ("ddpm", "100")
# The fewest network calls whose MRR stayed within 0.02 of the original's on every
# trained model measured, and of those the one whose samples kept the original's
# detail (docs/performance.md, "Faithfulness against network calls"): 8 steps of
# DPM-Solver++(2M) spaced evenly in the square root of t, against the original's 100.
FAST = ("dpm++2m", "quad8")
# A sampler named without --steps takes these steps.
SAMPLER_STEPS = {"ddpm": "100", "ddim": "100", "dpm++2m": FAST[1], "dpm++3m": FAST[1]}


@dataclass(frozen=True)
class SamplingOptions:
    sampler: str = AUTO
    steps: str = AUTO
    eta: float | None = None
    seed: int = 0
    batch_size: int = 16
    clip_denoised: bool = True
    precision: str = "fp32"
    compile: bool = False
    guidance: float = 1.0  # representation guidance W; 1 is plain conditional sampling

    def to_dict(self) -> dict:
        return {
            "sampler": self.sampler,
            "steps": self.steps,
            "eta": self.eta,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "clip_denoised": self.clip_denoised,
            "precision": self.precision,
            "compile": self.compile,
            "guidance": self.guidance,
        }

    def speed(self) -> Speed | None:
        """The network's fast paths, or None for the plain float32 eager call (the
        default)."""
        if self.precision == "fp32" and not self.compile:
            return None
        return Speed(precision=self.precision, compile=self.compile)


@dataclass
class SampleBatchProgress:
    batch: int
    batches: int
    step: int
    steps: int


@dataclass
class SampleResult:
    samples: torch.Tensor  # (num_reps, n, 3, H, W) in [-1, 1], on the CPU
    seconds: float
    seeds: list[list[int]] = field(default_factory=list)


def sample_seed(seed: int, rep_index: int, sample_index: int) -> int:
    """The seed of one sample's random stream."""
    return stream_seed(seed, rep_index, sample_index)


def load_noise(noise: torch.Tensor, n: int, image_size: int) -> torch.Tensor:
    """Check a user-supplied initial noise: n x 3 x H x W, or 1 x 3 x H x W to broadcast."""
    shape = tuple(noise.shape)
    if noise.ndim != 4 or shape[1:] != (3, image_size, image_size) or shape[0] not in (1, n):
        wanted = f"{n}x3x{image_size}x{image_size}" + (f" or 1x3x{image_size}x{image_size}" if n > 1 else "")
        raise UsageError(f"initial noise must have shape {wanted}, got {'x'.join(map(str, shape))}")
    if not torch.isfinite(noise).all():
        raise UsageError("initial noise contains NaN or infinite values")
    return noise.float().expand(n, -1, -1, -1)


def default_sampling(meta: CheckpointMeta) -> tuple[str, str]:
    """The sampler and steps that "auto" means for a model: the original's 100
    ancestral steps for the authors' own models (released, or imported from their
    files), whose published results were drawn so and on which the fast
    configuration has not been measured; the measured fast configuration for every
    model rcdm trained."""
    return ORIGINAL if meta.source.get("kind") in ("released", "converted") else FAST


def resolve_sampling(meta: CheckpointMeta, options: SamplingOptions) -> SamplingOptions:
    """``options`` with "auto" replaced by what it means for this model: both auto,
    the model's default; a sampler named with auto steps, that sampler's steps; steps
    given with an auto sampler, the model's default sampler."""
    sampler, steps = options.sampler, options.steps
    if sampler == AUTO:
        sampler, default_steps = default_sampling(meta)
        steps = default_steps if steps == AUTO else steps
    if steps == AUTO:
        get_sampler(sampler)  # an unknown name fails as such
        steps = SAMPLER_STEPS.get(sampler, ORIGINAL[1])
    if (sampler, steps) == (options.sampler, options.steps):
        return options
    return replace(options, sampler=sampler, steps=steps)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable; else the physical total),
    or None where neither can be read."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_fits_memory(images: int, image_size: int, what: str) -> None:
    """Refuse, before any work, a count of samples that a run holds at once (float32,
    3 x size x size each) and that could not fit in half the available memory: a
    typo such as -n 1000000000000 is an error line, not a hang or an allocation
    failure after loading."""
    need = images * 3 * image_size * image_size * 4
    available = available_memory()
    if available is not None and need > available // 2:
        raise UsageError(
            f"{what} asks for {images:,} samples of {image_size}x{image_size} at once: {_bytes(need)} of memory, "
            f"with {_bytes(available)} available; ask for fewer per run"
        )


def _bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} PB"


def check_request(
    meta: CheckpointMeta,
    reps: torch.Tensor | None,
    n: int,
    options: SamplingOptions,
    device: torch.device | str | None = None,
) -> GaussianDiffusion:
    """Every check that needs only the metadata (and the device, when given), so a
    bad request fails before the weights are loaded; returns the respaced diffusion."""
    options = resolve_sampling(meta, options)
    if n <= 0:
        raise UsageError(f"the number of samples must be positive, got {n}")
    if options.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {options.seed}")
    if options.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {options.batch_size}")
    get_sampler(options.sampler)
    if options.eta is not None and options.sampler != "ddim":
        raise UsageError("--eta applies to the DDIM sampler only")
    if options.eta is not None and not (options.eta >= 0 and math.isfinite(options.eta)):
        raise UsageError(f"--eta must be a finite number >= 0, got {options.eta}")
    if options.precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {options.precision!r}")
    if device is not None:
        check_precision(options.precision, device)
    check_guidance(meta, options.guidance)
    if reps is not None:
        check_reps(reps, meta.rep_dim)
    return GaussianDiffusion.from_config(meta.diffusion, respacing=options.steps or "")


def check_guidance(meta: CheckpointMeta, guidance: float) -> None:
    """W must be a finite number >= 0 (0 samples the model's unconditional half), and
    W != 1 needs the null representation that conditioning dropout trains."""
    if not (math.isfinite(guidance) and guidance >= 0):
        raise UsageError(f"--guidance must be a finite number >= 0, got {guidance}")
    if guidance != 1.0 and not meta.unet.null_representation:
        raise UsageError(
            f"--guidance {guidance:g} needs a model trained with --cond-drop (it learns a null representation); "
            "this one has none: leave --guidance at 1"
        )


def resolved_eta(options: SamplingOptions) -> float | None:
    """The DDIM noise actually used (0 when not given), for manifests; None for the
    samplers that have no such setting."""
    if options.sampler != "ddim":
        return None
    return 0.0 if options.eta is None else float(options.eta)


def check_reps(reps: torch.Tensor, rep_dim: int | None) -> torch.Tensor:
    if reps.ndim != 2:
        raise UsageError(f"representations must be a 2-D array (one row per vector), got shape {tuple(reps.shape)}")
    if reps.shape[1] != rep_dim:
        raise UsageError(f"the model is conditioned on {rep_dim}-d representations, got {reps.shape[1]}-d vectors")
    if not torch.isfinite(reps).all():
        raise UsageError("representations contain NaN or infinite values")
    return reps.float()


def sample_representations(
    model: RCDMModel,
    reps: torch.Tensor,
    n: int,
    options: SamplingOptions,
    *,
    noise: torch.Tensor | None = None,
    same_noise: bool = False,
    progress: Callable[[SampleBatchProgress], None] | None = None,
    on_row: Callable[[int, torch.Tensor], None] | None = None,
    first_row: int = 0,
) -> SampleResult:
    """Draw ``n`` samples for each row of ``reps``; returns images in [-1, 1].

    ``first_row`` is the position of ``reps[0]`` in a longer run drawn in parts: the
    samples (whose noise is seeded by position) are those the whole run would draw.

    With ``same_noise`` every row uses the same n random streams (initial and
    per-step noise), so that differences between rows come from the representation
    alone (interpolation paths, arithmetic variants). ``on_row(j, samples)`` is called
    as soon as row ``j``'s n samples are complete (rows complete in order), so that a
    long run can write its results as it goes and an interruption loses only the
    rows in progress.
    """
    options = resolve_sampling(model.meta, options)
    diffusion = check_request(model.meta, reps, n, options, model.device)
    model.accelerate(options.speed())
    reps = reps.float()
    size = model.image_size
    if noise is not None:
        noise = load_noise(noise, n, size)
    sampler = get_sampler(options.sampler)

    jobs = [(j, k) for j in range(reps.shape[0]) for k in range(n)]
    seeds = [[sample_seed(options.seed, 0 if same_noise else first_row + j, k) for k in range(n)] for j in range(reps.shape[0])]
    out = torch.empty(reps.shape[0], n, 3, size, size)
    batches = [jobs[i : i + options.batch_size] for i in range(0, len(jobs), options.batch_size)]
    start = time.perf_counter()
    next_row = 0
    for b, batch in enumerate(batches):
        generators = [torch.Generator().manual_seed(seeds[j][k]) for j, k in batch]
        x_T = randn((len(batch), 3, size, size), generators, model.device)
        if noise is not None:
            x_T = torch.stack([noise[k] for _, k in batch]).to(model.device)
        batch_reps = reps[[j for j, _ in batch]]

        def report(info: dict, b=b) -> None:
            if progress is not None:
                progress(SampleBatchProgress(b + 1, len(batches), info["step"], info["total"]))

        with exact_float32(model.device, options.precision):
            x0 = sampler(
                model.denoiser(batch_reps, options.guidance),
                diffusion,
                x_T,
                generator=generators,
                clip_denoised=options.clip_denoised,
                callback=report,
                eta=options.eta,
            )
        for (j, k), img in zip(batch, x0.float().cpu()):
            out[j, k] = img.clamp(-1, 1)
        last_j, last_k = batch[-1]
        complete = last_j + 1 if last_k == n - 1 else last_j  # rows [0, complete) are done
        if on_row is not None:
            for j in range(next_row, complete):
                on_row(j, out[j])
        next_row = complete
    return SampleResult(out, time.perf_counter() - start, seeds)
