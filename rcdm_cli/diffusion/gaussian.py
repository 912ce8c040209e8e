"""The Gaussian diffusion process of the released models, as pure tensor maths.

Nothing here calls a network by itself except :meth:`GaussianDiffusion.training_losses`,
which takes the network as a plain callable ``model(x_t, t) -> output``; everything
else takes the network's output as an argument. The callable always receives the
*original* timestep index (0...T-1 of the trained process), also when this process is a
respaced one, because that is what the network was trained with.

Schedule quantities are computed in float64 and rounded to float32 when they meet a
tensor, exactly like the original code, so results agree to float32 rounding.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from rcdm_cli.diffusion.config import DiffusionConfig
from rcdm_cli.diffusion.likelihood import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from rcdm_cli.diffusion.respace import space_timesteps
from rcdm_cli.diffusion.schedules import named_betas

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")
_LOG2 = float(np.log(2.0))


class PosteriorParams(NamedTuple):
    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor


def randn(shape, generator: torch.Generator | Sequence[torch.Generator] | None, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device and moved to ``device``.

    Drawing with a CPU generator makes a seed mean the same noise on every device. A
    sequence of generators draws row ``i`` of the batch from generator ``i``, so that
    each sample's noise is independent of how samples are grouped into batches.
    """
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else torch.device(device)
        return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generator]
    return torch.stack(rows).to(device, dtype)


class _Tables:
    """Per-timestep coefficients in float64 and their float32 copies, one per device."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self._cache: dict[tuple[str, torch.device], torch.Tensor] = {}

    def get(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        key = (name, t.device)
        table = self._cache.get(key)
        if table is None:
            table = torch.from_numpy(self.arrays[name]).float().to(t.device)
            self._cache[key] = table
        return table[t].reshape(-1, *([1] * (ndim - 1)))


class GaussianDiffusion:
    """Forward process, posterior, the learned-range variance and the hybrid loss."""

    def __init__(
        self,
        betas: np.ndarray,
        *,
        learn_sigma: bool = True,
        sigma_small: bool = False,
        predict_xstart: bool = False,
        loss_type: str = "mse",
        timestep_map: list[int] | None = None,
        rescale_timesteps: bool = False,
        original_num_steps: int | None = None,
    ):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss type {loss_type!r}")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.learn_sigma = learn_sigma
        self.sigma_small = sigma_small
        self.predict_xstart = predict_xstart
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps or self.num_timesteps
        self.timestep_map = list(timestep_map) if timestep_map is not None else list(range(self.num_timesteps))
        if len(self.timestep_map) != self.num_timesteps:
            raise ValueError("timestep_map must have one entry per step")
        self._map_cache: dict[torch.device, torch.Tensor] = {}

        alphas = 1.0 - betas
        acp = np.cumprod(alphas)
        acp_prev = np.append(1.0, acp[:-1])
        self.alphas_cumprod = acp
        self.alphas_cumprod_prev = acp_prev
        posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
        # The posterior variance is 0 at t = 0; its log is clipped to the next value.
        posterior_log_var = np.log(np.append(posterior_variance[1], posterior_variance[1:])) if len(betas) > 1 else np.log(np.maximum(posterior_variance, 1e-20))
        fixed_large = np.append(posterior_variance[1], betas[1:]) if len(betas) > 1 else betas
        self.tables = _Tables(
            {
                "betas": betas,
                "log_betas": np.log(betas),
                "alphas_cumprod": acp,
                "alphas_cumprod_prev": acp_prev,
                "sqrt_alphas_cumprod": np.sqrt(acp),
                "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
                "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / acp),
                "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1),
                "posterior_variance": posterior_variance,
                "posterior_log_variance_clipped": posterior_log_var,
                "posterior_mean_coef1": betas * np.sqrt(acp_prev) / (1.0 - acp),
                "posterior_mean_coef2": (1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
                "fixed_large_variance": fixed_large,
                "fixed_large_log_variance": np.log(fixed_large),
            }
        )

    # --- construction ---------------------------------------------------------------

    @classmethod
    def from_config(cls, config: DiffusionConfig, respacing: str | None = None) -> "GaussianDiffusion":
        """The process a configuration trains with, optionally respaced for sampling
        (``respacing`` overrides the configuration's ``timestep_respacing``)."""
        if config.use_kl:
            loss_type = "rescaled_kl"
        elif config.rescale_learned_sigmas:
            loss_type = "rescaled_mse"
        else:
            loss_type = "mse"
        base = cls(
            named_betas(config.noise_schedule, config.steps),
            learn_sigma=config.learn_sigma,
            sigma_small=config.sigma_small,
            predict_xstart=config.predict_xstart,
            loss_type=loss_type,
            rescale_timesteps=config.rescale_timesteps,
        )
        spec = config.timestep_respacing if respacing is None else respacing
        return base.respace(spec) if spec else base

    def respace(self, spec: str | int | None) -> "GaussianDiffusion":
        """A shorter process that keeps some of this one's steps, with betas chosen so
        that the kept steps have the same cumulative noise level (alpha-bar)."""
        kept = space_timesteps(self.num_timesteps, spec, [float(a) for a in self.alphas_cumprod])
        new_betas = []
        last = 1.0
        for i in kept:
            new_betas.append(1.0 - self.alphas_cumprod[i] / last)
            last = self.alphas_cumprod[i]
        return GaussianDiffusion(
            np.array(new_betas),
            learn_sigma=self.learn_sigma,
            sigma_small=self.sigma_small,
            predict_xstart=self.predict_xstart,
            loss_type=self.loss_type,
            timestep_map=[self.timestep_map[i] for i in kept],
            rescale_timesteps=self.rescale_timesteps,
            original_num_steps=self.original_num_steps,
        )

    # --- helpers ----------------------------------------------------------------------

    def _coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.tables.get(name, t, like.ndim)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The timestep values to give the network for this process's indices ``t``."""
        table = self._map_cache.get(t.device)
        if table is None:
            table = torch.tensor(self.timestep_map, dtype=torch.long, device=t.device)
            self._map_cache[t.device] = table
        mapped = table[t]
        if self.rescale_timesteps:
            return mapped.float() * (1000.0 / self.original_num_steps)
        return mapped

    # --- forward process ------------------------------------------------------------

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) with the given standard-normal noise."""
        return (
            self._coef("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._coef("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._coef("posterior_mean_coef1", t, x_t) * x_start + self._coef("posterior_mean_coef2", t, x_t) * x_t
        return (
            mean,
            self._coef("posterior_variance", t, x_t),
            self._coef("posterior_log_variance_clipped", t, x_t),
        )

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self._coef(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    # --- reverse process --------------------------------------------------------------

    def split_output(self, model_output: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean prediction, variance prediction or None) from the network's channels."""
        channels = x_t.shape[1]
        if self.learn_sigma:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"a learned-sigma model must output {2 * channels} channels, got {model_output.shape[1]}"
                )
            mean_part, var_part = torch.split(model_output, channels, dim=1)
            return mean_part, var_part
        return model_output, None

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool = True
    ) -> PosteriorParams:
        """p(x_{t-1} | x_t) given the network's output at (x_t, t), and its x_0 guess."""
        model_output = model_output.float()
        mean_part, var_part = self.split_output(model_output, x_t)
        if var_part is not None:
            # learned range: interpolate, in log space, between the posterior variance
            # (lower bound) and beta_t (upper bound).
            min_log = self._coef("posterior_log_variance_clipped", t, x_t)
            max_log = self._coef("log_betas", t, x_t)
            frac = (var_part + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        elif self.sigma_small:
            variance = self._coef("posterior_variance", t, x_t).expand_as(x_t)
            log_variance = self._coef("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        else:
            variance = self._coef("fixed_large_variance", t, x_t).expand_as(x_t)
            log_variance = self._coef("fixed_large_log_variance", t, x_t).expand_as(x_t)

        pred_xstart = mean_part if self.predict_xstart else self.predict_xstart_from_eps(x_t, t, mean_part)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return PosteriorParams(mean, variance, log_variance, pred_xstart)

    # --- training -------------------------------------------------------------------------

    def vb_terms_bpd(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One term of the variational bound, in bits per dimension: the KL to the true
        posterior for t > 0, the decoder's negative log-likelihood at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)) / _LOG2
        nll = -discretized_gaussian_log_likelihood(x_start, out.mean, 0.5 * out.log_variance)
        nll = mean_flat(nll) / _LOG2
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example losses: ``mse`` on the noise, ``vb`` for the variance (the
        hybrid objective of the released models), and their sum ``loss``."""
        if noise is None:
            noise = randn(x_start.shape, generator, x_start.device, x_start.dtype)
        x_t = self.q_sample(x_start, t, noise)
        model_output = model(x_t, self.model_timesteps(t)).float()
        terms: dict[str, torch.Tensor] = {}
        if self.loss_type in ("kl", "rescaled_kl"):
            terms["loss"] = self.vb_terms_bpd(model_output, x_start, x_t, t)
            if self.loss_type == "rescaled_kl":
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        mean_part, var_part = self.split_output(model_output, x_t)
        if var_part is not None:
            # The bound trains only the variance: the mean is frozen so that the
            # mse term alone drives it, as in Nichol & Dhariwal's hybrid loss.
            frozen = torch.cat([mean_part.detach(), var_part], dim=1)
            vb = self.vb_terms_bpd(frozen, x_start, x_t, t)
            if self.loss_type == "rescaled_mse":
                vb = vb * (self.num_timesteps / 1000.0)
            terms["vb"] = vb
        target = x_start if self.predict_xstart else noise
        terms["mse"] = mean_flat((target - mean_part) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms
