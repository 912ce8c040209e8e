"""Which visual attributes RCDM samples keep: the paper's "what stays the same across
samples is what the representation encodes; what varies is what it discards", in
numbers, attribute by attribute.

Every attribute value is a vector whose Euclidean distances are the attribute's
distances (see :mod:`rcdm_cli.encoders.attributes`). On N conditioning images and K
samples of each:

- **retrieval**: for each sample, the N conditioning images are ranked by attribute
  distance to it, and the rank of its own image is kept (mean rank, MRR, top-1/top-5,
  ties at their expected rank, exactly as ``evaluate rank``). Better than chance means
  that image-specific information about the attribute survives in the samples. Images
  that share the attribute tie, so ``ceiling_mrr``, the MRR of samples that reproduce
  it exactly, says how high it can go (with 4 backgrounds among 32 images, about 0.3).
- **spread**: W / T, where W is the variance of the attribute among the K samples of
  one image (mean squared distance to their mean, averaged over images) and T its
  variance over all N*K samples (mean squared distance to the overall mean). It is
  the within-image share of the samples' total variance (one minus the correlation
  ratio eta squared), so it lies in [0, 1]: 0 when the samples of one image agree on
  the attribute (the representation fixes it), high when they vary as much as samples
  of different images do (the representation discards it, or the model ignores it).
  Samples that ignore their image score N(K - 1) / (NK - 1) on average (``chance_
  spread``: 0.76 for 32 images and 4 samples, 1 as K grows), not 1, because the mean of
  K samples follows them. ``within_over_images`` compares the same within-image
  variance (unbiased: over K - 1) with the unbiased variance of the attribute over the
  conditioning images themselves: about 1 when one image's samples differ as much as
  real images do.

With augmentations, each image is also conditioned on an augmented view, its samples
drawn with the same noise as the original's (sample k of both shares its seed), and
**carried** is the slope, through the origin, of the samples' change of the attribute
against the images' change: sum_i <dI_i, dS_i> / sum_i |dI_i|^2, with dI_i the change
of image i's attribute under the augmentation and dS_i the mean change of its samples'.
1: the samples follow the augmented view (the representation is not invariant to the
augmentation); 0: they do not change (it is). A 95% interval comes from a bootstrap
over images; the MRR and the spread get one too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from rcdm_cli.encoders import AttributeSpec, get_registry
from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.augmentations import AUGMENTATIONS, check_augmentations  # noqa: F401 - also importable from here
from rcdm_cli.evaluation.invariance import augmented
from rcdm_cli.evaluation.rank import rank_table, summarize
from rcdm_cli.pipeline.sampling import SamplingOptions
from rcdm_cli.preprocessing import diffusion_target
from rcdm_cli.seeding import stream_seed

BOOTSTRAP = 2000
BOOTSTRAP_TAG = 12  # stream tag of the bootstrap's resampling
NO_CHANGE = 1e-12  # an augmentation whose image change is this small does not change the attribute


# --- choosing attributes -----------------------------------------------------------


def select_attributes(names: Sequence[str] | None = None) -> list[AttributeSpec]:
    """The attributes named (a name or a group name such as ``image`` or ``scene``),
    in registration order; without names, every default attribute."""
    registry = get_registry()
    available = {name: entry.spec for name, entry in registry.attributes.items()}
    if not names:
        chosen = [spec for spec in available.values() if spec.default]
        if not chosen:
            raise UsageError("no attribute is installed; see `rcdm attributes`")
        return chosen
    chosen: dict[str, AttributeSpec] = {}
    groups = {spec.group for spec in available.values()}
    for name in names:
        if name in groups and name not in available:
            chosen.update({s.name: s for s in available.values() if s.group == name})
        else:
            spec = registry.attribute(name)
            chosen[spec.name] = spec
    return list(chosen.values())


# --- images as attribute input -------------------------------------------------------


def conditioning_views(pictures: Sequence[Image.Image], size: int) -> np.ndarray:
    """What the diffusion model sees of each conditioning image (its centre crop at the
    model's size), as (N, size, size, 3) floats in [0, 1]: samples are compared with
    the part of the image they could have reproduced, at their own resolution."""
    return np.stack([(diffusion_target(p, size).permute(1, 2, 0).numpy() + 1) / 2 for p in pictures]).astype(np.float32)


def sample_views(samples: torch.Tensor) -> np.ndarray:
    """Samples (..., 3, H, W) in [-1, 1] as (count, H, W, 3) floats in [0, 1], rounded
    to 8 bits as the saved PNGs are."""
    flat = samples.reshape(-1, *samples.shape[-3:])
    pixels = ((flat.clamp(-1, 1) + 1) * 127.5).round() / 255
    return pixels.permute(0, 2, 3, 1).numpy().astype(np.float32)


def attribute_values(spec: AttributeSpec, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(count, width) vectors of one attribute, computed a batch at a time."""
    parts = [spec.values(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, spec.width))


# --- the measures ---------------------------------------------------------------------


def retrieval(cond: np.ndarray, samples: np.ndarray) -> dict:
    """Rank of each sample's own conditioning image among the N by attribute distance:
    ``cond`` (N, D), ``samples`` (N, K, D)."""
    n, k, d = samples.shape
    flat = torch.from_numpy(samples.reshape(n * k, d)).double()
    sims = -torch.cdist(flat, torch.from_numpy(cond).double())
    return summarize(rank_table(sims, n, k))


def _variance(x: np.ndarray, ddof: int = 0) -> float:
    """Total variance of (count, D) vectors (the trace of their covariance): mean
    squared distance to their mean, over count - ddof."""
    if len(x) <= ddof:
        return 0.0
    return float(((x - x.mean(axis=0)) ** 2).sum() / (len(x) - ddof))


def spread(cond: np.ndarray, samples: np.ndarray) -> dict:
    """W / T (see the module docstring) and its parts; ``spread`` is None when the
    attribute does not vary at all among the samples."""
    n, k, d = samples.shape
    if k < 2:
        raise UsageError("the spread of an attribute needs at least 2 samples per image (-n 2)")
    within = float(np.mean([_variance(samples[i]) for i in range(n)]))
    total = _variance(samples.reshape(n * k, d))
    within_unbiased = within * k / (k - 1)
    images = _variance(cond, ddof=1)
    return {
        "spread": within / total if total > 0 else None,
        "chance_spread": n * (k - 1) / (n * k - 1),
        "within_variance": within_unbiased,
        "total_variance": _variance(samples.reshape(n * k, d), ddof=1),
        "image_variance": images,
        "within_over_images": within_unbiased / images if images > 0 else None,
    }


def carried(
    cond: np.ndarray, cond_aug: np.ndarray, samples: np.ndarray, samples_aug: np.ndarray, seed: int = 0
) -> dict:
    """How much of an augmentation's change of an attribute the samples show (the
    slope through the origin), with a bootstrap interval over images. ``cond`` and
    ``cond_aug`` are (N, D); ``samples`` and ``samples_aug`` (N, K, D), paired by
    noise."""
    d_image = cond_aug - cond
    d_sample = (samples_aug - samples).mean(axis=1)
    dots = (d_image * d_sample).sum(axis=1)
    norms = (d_image**2).sum(axis=1)
    result = {
        "image_change": float(np.sqrt(norms.mean())),
        "sample_change": float(np.sqrt((d_sample**2).sum(axis=1).mean())),
        "changed_images": int((norms > NO_CHANGE).sum()),
    }
    if norms.sum() <= NO_CHANGE * len(norms):
        return {**result, "carried": None, "ci_low": None, "ci_high": None}
    rng = np.random.default_rng(stream_seed(seed, BOOTSTRAP_TAG))
    picks = rng.integers(0, len(norms), (BOOTSTRAP, len(norms)))
    top, bottom = dots[picks].sum(axis=1), norms[picks].sum(axis=1)
    slopes = top[bottom > 0] / bottom[bottom > 0]
    low, high = np.percentile(slopes, [2.5, 97.5]) if len(slopes) else (np.nan, np.nan)
    return {**result, "carried": float(dots.sum() / norms.sum()), "ci_low": float(low), "ci_high": float(high)}


def _means(spec: AttributeSpec, vectors: np.ndarray) -> float | None:
    value = spec.summary_value(vectors.reshape(-1, vectors.shape[-1]))
    return None if value is None else float(value.mean())


def intervals(cond: np.ndarray, samples: np.ndarray, seed: int = 0) -> dict:
    """95% bootstrap intervals (over conditioning images) of the MRR and the spread.
    The ranks are kept as they were among all N images, so the MRR's interval is
    that of the mean of per-image reciprocal ranks; the spread is recomputed on each
    resample from per-image sums."""
    n, k, d = samples.shape
    flat = torch.from_numpy(samples.reshape(n * k, d)).double()
    table = rank_table(-torch.cdist(flat, torch.from_numpy(cond).double()), n, k)
    reciprocal = table.expected_reciprocal_rank().mean(dim=1).numpy()
    rng = np.random.default_rng(stream_seed(seed, BOOTSTRAP_TAG, 1))
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(BOOTSTRAP)]).astype(np.float64)
    mrr = counts @ reciprocal / n
    first = samples.sum(axis=1)  # (N, D)
    second = (samples**2).sum(axis=(1, 2))  # (N,)
    within = np.array([((samples[i] - samples[i].mean(axis=0)) ** 2).sum() / k for i in range(n)])
    size = counts.sum(axis=1) * k
    mean = counts @ first / size[:, None]
    total = counts @ second / size - (mean**2).sum(axis=1)
    ratio = (counts @ within / counts.sum(axis=1))[total > 1e-15] / total[total > 1e-15]
    spread_ci = np.percentile(ratio, [2.5, 97.5]).tolist() if len(ratio) else [None, None]
    return {"mrr_ci": np.percentile(mrr, [2.5, 97.5]).tolist(), "spread_ci": spread_ci}


def score_attribute(spec: AttributeSpec, cond: np.ndarray, samples: np.ndarray, seed: int = 0) -> dict:
    """Retrieval and spread of one attribute, with what a reader needs alongside:
    its kind, their bootstrap intervals and, where one exists, the mean value on
    images and samples (a share for a two-category attribute)."""
    return {
        "kind": spec.kind,
        "group": spec.group,
        **retrieval(cond, samples),
        "ceiling_mrr": retrieval(cond, cond[:, None])["mrr"],
        **spread(cond, samples),
        **intervals(cond, samples, seed),
        "images_mean": _means(spec, cond),
        "samples_mean": _means(spec, samples),
    }


def score_augmentation(
    spec: AttributeSpec, cond: np.ndarray, cond_aug: np.ndarray, samples: np.ndarray, samples_aug: np.ndarray, seed: int
) -> dict:
    return {
        **carried(cond, cond_aug, samples, samples_aug, seed),
        "images_original": _means(spec, cond),
        "images_augmented": _means(spec, cond_aug),
        "samples_original": _means(spec, samples),
        "samples_augmented": _means(spec, samples_aug),
    }


# --- one representation, end to end ---------------------------------------------------


@dataclass
class AttributeRun:
    """What one RCDM was measured on: its conditioning views and samples, kept so
    that the caller can show them (the demo's grids) without sampling twice."""

    scores: dict[str, dict]
    augmentations: dict[str, dict]
    cond_images: np.ndarray  # (N, H, W, 3)
    samples: torch.Tensor  # (N, K, 3, H, W) in [-1, 1]
    augmented_views: dict[str, np.ndarray]  # the augmented conditioning images, as cond_images
    augmented_samples: dict[str, torch.Tensor]
    network_calls: int


def measure_attributes(
    run,
    pictures: Sequence[Image.Image],
    specs: Sequence[AttributeSpec],
    n: int,
    options: SamplingOptions,
    *,
    augmentations: Sequence[str] = (),
    sample: Callable | None = None,
    encode: Callable | None = None,
    event: Callable[[str], None] = lambda message: None,
) -> AttributeRun:
    """Encode the images with the run's encoder, draw ``n`` samples of each, and score
    every attribute; then, for each augmentation, the same for the augmented views
    (same noise). ``sample(reps, n, options)`` and ``encode(pictures)`` default to the
    run's own and let a caller show progress."""
    if len(pictures) < 2:
        raise UsageError("measuring attributes needs at least two conditioning images")
    if n < 2:
        raise UsageError("measuring attributes needs at least 2 samples per image (-n 2)")
    augmentations = check_augmentations(augmentations)
    diffusion = run.check(None, n, options)
    sample = sample or (lambda reps, count, opts: run.sample(reps, count, opts))
    encode = encode or (lambda images: run.encode(images, options.batch_size))
    size = run.meta.image_size

    samples = sample(encode(pictures), n, options).samples
    cond_images = conditioning_views(pictures, size)
    sample_images = sample_views(samples)
    event(f"computing {len(specs)} attributes on {len(pictures)} images and {len(sample_images)} samples")
    cond_values = {s.name: attribute_values(s, cond_images) for s in specs}
    sample_values = {s.name: attribute_values(s, sample_images).reshape(len(pictures), n, -1) for s in specs}
    scores = {s.name: score_attribute(s, cond_values[s.name], sample_values[s.name], options.seed) for s in specs}

    augmented_scores: dict[str, dict] = {}
    augmented_views: dict[str, np.ndarray] = {}
    augmented_samples: dict[str, torch.Tensor] = {}
    for name in augmentations:
        aug = AUGMENTATIONS[name]
        views = [augmented(p, aug, options.seed, i) for i, p in enumerate(pictures)]
        event(f"conditioning on the {name} views")
        aug_samples = sample(encode(views), n, options).samples
        augmented_samples[name] = aug_samples
        aug_cond = augmented_views[name] = conditioning_views(views, size)
        aug_sample_images = sample_views(aug_samples)
        per_attribute = {}
        for s in specs:
            per_attribute[s.name] = score_augmentation(
                s, cond_values[s.name], attribute_values(s, aug_cond),
                sample_values[s.name], attribute_values(s, aug_sample_images).reshape(len(pictures), n, -1), options.seed,
            )
        augmented_scores[name] = {
            "trained": aug.trained, "description": aug.description, "changes": list(aug.changes),
            "attributes": per_attribute,
        }
    calls = diffusion.num_timesteps * (1 + len(augmentations))
    return AttributeRun(scores, augmented_scores, cond_images, samples, augmented_views, augmented_samples, calls)


def attribute_record(run, measured: AttributeRun, paths: Sequence, options: SamplingOptions, n: int) -> dict:
    """One representation's result, as appended to the results file."""
    return {
        "metric": "attributes",
        "label": f"{get_registry().display_name(run.plan.encoder)}/{run.plan.layer}",
        "checkpoint": run.checkpoint_info(),
        "encoder": run.plan.encoder,
        "weights": run.encoder_info().get("weights"),
        "layer": run.plan.layer,
        "images": len(paths),
        "samples_per_image": n,
        "attributes": measured.scores,
        "augmentations": measured.augmentations,
        "sampling": {**options.to_dict(), "network_calls": measured.network_calls},
        "image_paths": [str(p) for p in paths],
    }
