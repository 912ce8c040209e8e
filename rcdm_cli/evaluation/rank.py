"""The paper's faithfulness measure: is a sample closer, in representation space, to
the image it was conditioned on than to the other images?

For each sample of conditioning image i, the N conditioning images are ranked by
similarity to the sample's representation; the rank of image i (1 = the most similar)
is the sample's rank. A perfect generator gives rank 1 everywhere (MRR 1); one that
ignores its conditioning gives, averaged over images, the chance values
(N + 1) / 2 and H_N / N.

Ties are broken at random, in expectation: an image tied with t others, below g
that are strictly more similar, has a rank drawn uniformly from g + 1 .. g + t + 1.
Its mean rank, reciprocal rank and top-k rates are the expectations over that draw,
so a collapsed encoder (every representation equal) scores exactly the chance values
rather than a perfect 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rcdm_cli.errors import UsageError

METRICS = ("cosine", "l2")
TIE_TOLERANCE = 1e-9  # similarities this close (relative) are ties: rounding noise must not break them


def similarity(a: torch.Tensor, b: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """(len(a), len(b)) similarities; larger is closer for both metrics."""
    if metric == "cosine":
        return F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T
    if metric == "l2":
        return -torch.cdist(a.double(), b.double())
    raise UsageError(f"unknown similarity {metric!r}; choose cosine or l2")


@dataclass
class RankTable:
    """Per sample (N, K): how many other conditioning images are strictly more
    similar (``greater``) and how many are tied with the true one (``ties``)."""

    greater: torch.Tensor
    ties: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.greater.shape

    def expected_rank(self) -> torch.Tensor:
        return 1 + self.greater.double() + self.ties.double() / 2

    def expected_reciprocal_rank(self) -> torch.Tensor:
        """The mean of 1/r over r = g + 1 .. g + t + 1: (H(g + t + 1) - H(g)) / (t + 1)."""
        return (_harmonic(self.greater + self.ties + 1) - _harmonic(self.greater)) / (self.ties.double() + 1)

    def top_k(self, k: int) -> torch.Tensor:
        """The probability that the rank is at most k."""
        inside = (k - self.greater).clamp(min=0, max=None).double()
        return torch.minimum(inside, self.ties.double() + 1) / (self.ties.double() + 1)

    def tolist(self) -> list[list[float]]:
        return self.expected_rank().tolist()


def _harmonic(n: torch.Tensor) -> torch.Tensor:
    """H(n) = 1 + 1/2 + ... + 1/n for integer tensors (H(0) = 0), exactly as a sum."""
    top = int(n.max()) if n.numel() else 0
    table = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(1.0 / torch.arange(1, top + 1, dtype=torch.float64), 0)])
    return table[n.long()]


def ranks(sample_reps: torch.Tensor, cond_reps: torch.Tensor, metric: str = "cosine") -> RankTable:
    """``sample_reps`` is (N, K, D), sample k of conditioning image n; ``cond_reps`` is
    (N, D)."""
    n, k, d = sample_reps.shape
    if cond_reps.shape != (n, d):
        raise ValueError(f"conditioning reps must be ({n}, {d}), got {tuple(cond_reps.shape)}")
    return rank_table(similarity(sample_reps.reshape(n * k, d), cond_reps, metric), n, k)


def rank_table(sims: torch.Tensor, n: int, k: int) -> RankTable:
    """The rank table from (N*K, N) similarities (larger is closer) of each sample,
    conditioning image n's samples first, to the N conditioning images: the one
    place where ties are decided, whatever the similarity measures."""
    rows = torch.arange(n * k)
    truth = torch.arange(n).repeat_interleave(k)
    own = sims[rows, truth][:, None]
    close = (sims - own).abs() <= TIE_TOLERANCE * own.abs().clamp_min(1.0)
    close[rows, truth] = False  # the image is not tied with itself
    greater = (sims > own) & ~close
    return RankTable(greater.sum(dim=1).reshape(n, k), close.sum(dim=1).reshape(n, k))


def chance(n: int) -> dict[str, float]:
    """What a generator that ignores its conditioning scores among ``n`` images."""
    harmonic = sum(1.0 / i for i in range(1, n + 1))
    return {
        "chance_mean_rank": (n + 1) / 2,
        "chance_mrr": harmonic / n,
        "chance_top1": 1 / n,
        "chance_top5": min(5, n) / n,
    }


def summarize(table: RankTable) -> dict[str, float]:
    n = table.shape[0]
    return {
        "mean_rank": float(table.expected_rank().mean()),
        "mrr": float(table.expected_reciprocal_rank().mean()),
        "top1": float(table.top_k(1).mean()),
        "top5": float(table.top_k(5).mean()),
        **chance(n),
        "images": n,
        "samples_per_image": table.shape[1],
        "tied_samples": int((table.ties > 0).sum()),
    }
