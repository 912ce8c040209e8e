"""How training picks timesteps: uniformly, or in proportion to each timestep's recent
loss (importance sampling of the variational bound, Nichol & Dhariwal sec. 3.3).

Every sampler returns (timesteps, weights); multiplying per-example losses by the
weights keeps the loss estimate unbiased whatever the sampling distribution.
"""

from __future__ import annotations

import numpy as np
import torch

from rcdm_cli.errors import UsageError


class UniformSampler:
    name = "uniform"

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def weights(self) -> np.ndarray:
        return np.ones(self.num_timesteps, dtype=np.float64)

    def sample(self, batch_size: int, device, generator: torch.Generator | None = None):
        w = self.weights()
        p = torch.from_numpy(w / w.sum())
        gen_device = generator.device if generator is not None else "cpu"
        idx = torch.multinomial(p.to(gen_device), batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p.to(gen_device)[idx])
        return idx.to(device), weights.float().to(device)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Loss-aware samplers learn from the per-example losses; this one does not."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossSecondMomentSampler(UniformSampler):
    """Sample t with probability proportional to sqrt(E[loss_t^2]) over the last
    ``history`` losses seen at t, mixed with a little uniform mass; uniform until every
    timestep has a full history."""

    name = "loss-second-moment"

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history = history
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=np.int64)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return np.ones(self.num_timesteps, dtype=np.float64)
        w = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        w /= w.sum()
        w *= 1 - self.uniform_prob
        w += self.uniform_prob / len(w)
        return w

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record losses; in distributed training pass every rank's (all-gathered)."""
        for t, loss in zip(timesteps.tolist(), losses.detach().float().cpu().tolist()):
            if self.loss_counts[t] == self.history:
                self.loss_history[t, :-1] = self.loss_history[t, 1:]
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, self.loss_counts[t]] = loss
                self.loss_counts[t] += 1

    def state_dict(self) -> dict:
        return {"loss_history": self.loss_history.tolist(), "loss_counts": self.loss_counts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.loss_history = np.asarray(state["loss_history"], dtype=np.float64)
        self.loss_counts = np.asarray(state["loss_counts"], dtype=np.int64)


TIMESTEP_SAMPLERS = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentSampler}


def create_timestep_sampler(name: str, num_timesteps: int) -> UniformSampler:
    try:
        return TIMESTEP_SAMPLERS[name](num_timesteps)
    except KeyError:
        raise UsageError(
            f"unknown schedule sampler {name!r}; choose one of: {', '.join(TIMESTEP_SAMPLERS)}"
        ) from None
