"""The paper's faithfulness measure: is a sample closer, in representation space, to
the image it was conditioned on than to the other images?

For each sample of conditioning image i, the N conditioning images are ranked by
similarity to the sample's representation; the rank of image i (1 = the most similar)
is the sample's rank. A perfect generator gives rank 1 everywhere (MRR 1); one that
ignores its conditioning gives, averaged over images, the chance values
(N + 1) / 2 and H_N / N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rcdm_cli.errors import UsageError

METRICS = ("cosine", "l2")


def similarity(a: torch.Tensor, b: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """(len(a), len(b)) similarities; larger is closer for both metrics."""
    if metric == "cosine":
        return F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T
    if metric == "l2":
        return -torch.cdist(a.double(), b.double())
    raise UsageError(f"unknown similarity {metric!r}; choose cosine or l2")


def ranks(sample_reps: torch.Tensor, cond_reps: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """(N, K) ranks: ``sample_reps`` is (N, K, D), sample k of conditioning image n;
    ``cond_reps`` is (N, D). Ties count in the sample's favour."""
    n, k, d = sample_reps.shape
    if cond_reps.shape != (n, d):
        raise ValueError(f"conditioning reps must be ({n}, {d}), got {tuple(cond_reps.shape)}")
    sims = similarity(sample_reps.reshape(n * k, d), cond_reps, metric)  # (N*K, N)
    truth = torch.arange(n).repeat_interleave(k)
    own = sims[torch.arange(n * k), truth]
    return (1 + (sims > own[:, None]).sum(dim=1)).reshape(n, k)


def summarize(rank_table: torch.Tensor) -> dict[str, float]:
    r = rank_table.double().flatten()
    n = rank_table.shape[0]
    harmonic = sum(1.0 / i for i in range(1, n + 1))
    return {
        "mean_rank": float(r.mean()),
        "mrr": float((1.0 / r).mean()),
        "top1": float((r <= 1).double().mean()),
        "top5": float((r <= 5).double().mean()),
        "chance_mean_rank": (n + 1) / 2,
        "chance_mrr": harmonic / n,
        "images": n,
        "samples_per_image": rank_table.shape[1],
    }
