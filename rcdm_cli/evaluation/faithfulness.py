"""One RCDM's faithfulness (``rcdm evaluate rank``), end to end: encode the
conditioning images, draw samples of each, encode the samples, rank (see
:mod:`rcdm_cli.evaluation.rank`), and the record the results file gets.

Encoding and sampling go through callbacks so that a caller can show their progress;
by default they are the run's own."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.rank import METRICS, ranks, summarize
from rcdm_cli.imaging import to_pil
from rcdm_cli.inputs import load_image
from rcdm_cli.pipeline.sampling import SamplingOptions

# encode(images, what): their representations; ``what`` is "images" or "samples"
Encode = Callable[[Sequence[Image.Image], str], torch.Tensor]


def check_rank_request(metric: str, paths: Sequence[Path]) -> None:
    """What can be refused before anything loads."""
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if len(paths) < 2:
        raise UsageError("ranking needs at least two conditioning images")


def measure_faithfulness(
    run,
    paths: Sequence[Path],
    n: int,
    options: SamplingOptions,
    metric: str = "cosine",
    *,
    encode: Encode | None = None,
    sample: Callable | None = None,
) -> dict:
    """The results record of ``n`` samples of each image at ``paths``: the summary
    (mean rank, MRR, top-k, chance), every sample's expected rank, and what was run."""
    check_rank_request(metric, paths)
    diffusion = run.check(None, n, options)
    encode = encode or (lambda images, what: run.encode(images, options.batch_size))
    sample = sample or (lambda reps, count, opts: run.sample(reps, count, opts))
    cond = encode([load_image(p) for p in paths], "images")
    samples = sample(cond, n, options).samples
    flat = [to_pil(img) for img in samples.reshape(-1, *samples.shape[2:])]
    sample_reps = encode(flat, "samples").reshape(len(paths), n, -1)
    table = ranks(sample_reps, cond, metric)
    return {
        "metric": "rank",
        "checkpoint": run.checkpoint_info(),
        "encoder": run.plan.encoder,
        "weights": run.encoder_info().get("weights"),
        "layer": run.plan.layer,
        "similarity": metric,
        **summarize(table),  # "images" is the count N
        "sampling": {**options.to_dict(), "network_calls": diffusion.num_timesteps},
        "image_paths": [str(p) for p in paths],
        "ranks": table.tolist(),  # expected ranks, ties broken at random
    }
