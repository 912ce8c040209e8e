"""Samplers: each a small function from initial noise to an image batch.

``ddpm`` (ancestral, the original) and ``ddim`` take one step of the respaced
process per network call; ``dpm++2m`` solves the probability-flow ODE with a
second-order multistep method, which is what makes 25 calls enough.

A sampler takes ``model(x_t, t) -> output`` with the conditioning already bound
(see :func:`rcdm_cli.pipeline.model.RCDMModel.denoiser`), the (possibly respaced)
diffusion, and the initial noise. All randomness comes from an explicit
``torch.Generator`` (or one per sample), so the same generator state gives the
same samples. Progress is
reported through ``callback(info)`` with ``info`` a dict holding ``step`` (1-based),
``total``, ``t`` (the original timestep), ``x`` and ``pred_xstart``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import math

import torch

from rcdm_cli.diffusion.gaussian import GaussianDiffusion, ModelFn, randn
from rcdm_cli.errors import UsageError

Callback = Callable[[dict], None]


def _timesteps(diffusion: GaussianDiffusion, x: torch.Tensor):
    for i in reversed(range(diffusion.num_timesteps)):
        yield i, torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)


def _report(callback: Callback | None, diffusion: GaussianDiffusion, k: int, i: int, x, pred_xstart) -> None:
    if callback is not None:
        callback(
            {
                "step": k,
                "total": diffusion.num_timesteps,
                "t": diffusion.timestep_map[i],
                "x": x,
                "pred_xstart": pred_xstart,
            }
        )


def ddpm_step(
    diffusion: GaussianDiffusion,
    model_output: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None,
    clip_denoised: bool = True,
):
    """One ancestral step x_t -> x_{t-1} with the model's (learned) variance.
    Returns (x_{t-1}, predicted x_0). No noise is added at t = 0."""
    out = diffusion.p_mean_variance(model_output, x, t, clip_denoised)
    if noise is None:
        return out.mean, out.pred_xstart
    nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
    return out.mean + nonzero * torch.exp(0.5 * out.log_variance) * noise, out.pred_xstart


def ddim_step(
    diffusion: GaussianDiffusion,
    model_output: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_denoised: bool = True,
):
    """One DDIM step x_t -> x_{t-1}; ``eta`` = 0 is deterministic, 1 matches DDPM's
    marginals (then ``noise`` is the fresh noise for this step). Returns (x_{t-1},
    predicted x_0)."""
    out = diffusion.p_mean_variance(model_output, x, t, clip_denoised)
    eps = diffusion.predict_eps_from_xstart(x, t, out.pred_xstart)
    alpha_bar = diffusion.tables.get("alphas_cumprod", t, x.ndim)
    alpha_bar_prev = diffusion.tables.get("alphas_cumprod_prev", t, x.ndim)
    sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    x_prev = out.pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    if noise is not None:
        nonzero = (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))
        x_prev = x_prev + nonzero * sigma * noise
    return x_prev, out.pred_xstart


@torch.no_grad()
def sample_ddpm(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    noise: torch.Tensor,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    clip_denoised: bool = True,
    callback: Callback | None = None,
    eta: float | None = None,
) -> torch.Tensor:
    """Ancestral sampling, the original RCDM sampler (``--use_ddim False``)."""
    if eta is not None:
        raise ValueError("eta is a setting of DDIM sampling only")
    x = noise
    for k, (i, t) in enumerate(_timesteps(diffusion, x), start=1):
        step_noise = randn(x.shape, generator, x.device) if i > 0 else None
        x, pred_xstart = ddpm_step(diffusion, model(x, diffusion.model_timesteps(t)), x, t, step_noise, clip_denoised)
        _report(callback, diffusion, k, i, x, pred_xstart)
    return x


@torch.no_grad()
def sample_ddim(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    noise: torch.Tensor,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    clip_denoised: bool = True,
    callback: Callback | None = None,
    eta: float | None = 0.0,
) -> torch.Tensor:
    """DDIM sampling; with eta = 0 the result is a deterministic function of the noise."""
    eta = 0.0 if eta is None else float(eta)
    if eta < 0:
        raise ValueError(f"DDIM's eta must be >= 0, got {eta}")
    x = noise
    for k, (i, t) in enumerate(_timesteps(diffusion, x), start=1):
        step_noise = randn(x.shape, generator, x.device) if eta > 0 and i > 0 else None
        x, pred_xstart = ddim_step(diffusion, model(x, diffusion.model_timesteps(t)), x, t, eta, step_noise, clip_denoised)
        _report(callback, diffusion, k, i, x, pred_xstart)
    return x


def _denoise(diffusion: GaussianDiffusion, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, clip: bool) -> torch.Tensor:
    """The x_0 estimate from the mean channels alone: an ODE solver has no use for the
    learned variance, and computing x_0 as the original does keeps results comparable."""
    mean_part, _ = diffusion.split_output(output.float(), x)
    x0 = mean_part if diffusion.predict_xstart else diffusion.predict_xstart_from_eps(x, t, mean_part)
    return x0.clamp(-1, 1) if clip else x0


def _half_log_snr(alpha_bar: float) -> float:
    """lambda = log(alpha / sigma), the time variable in which DPM-Solver's update is exact
    for a constant data prediction."""
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


def _multistep_update(x, history, a_t: float, a_s: float, order: int) -> torch.Tensor:
    """One DPM-Solver++ step from noise level a_t to a_s (alpha-bar) of the given
    order. ``history`` holds (x0 estimate, half log-SNR) pairs, newest first, the
    newest at a_t. With h = lambda_s - lambda_t, r_j the earlier steps' lengths over h
    and phi_1 = e^{-h} - 1, phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2:
    order 1: x_s = (sigma_s / sigma_t) x_t - alpha_s phi_1 m_0;
    order 2 adds -alpha_s phi_1 D_1 / 2 with D_1 = (m_0 - m_1) / r_0;
    order 3 instead adds alpha_s (phi_2 D_1 - phi_3 D_2), D_1 and D_2 the first and
    second divided differences of the x_0 estimates extrapolated to lambda_t."""
    (m0, lam_t), lam_s = history[0], _half_log_snr(a_s)
    h = lam_s - lam_t
    phi_1 = math.expm1(-h)
    x = math.sqrt((1.0 - a_s) / (1.0 - a_t)) * x - math.sqrt(a_s) * phi_1 * m0
    if order == 2:
        (m1, lam_1) = history[1]
        r0 = (lam_t - lam_1) / h
        x = x - 0.5 * math.sqrt(a_s) * phi_1 * (m0 - m1) / r0
    elif order == 3:
        (m1, lam_1), (m2, lam_2) = history[1], history[2]
        r0, r1 = (lam_t - lam_1) / h, (lam_1 - lam_2) / h
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        x = x + math.sqrt(a_s) * (phi_2 * d1 - phi_3 * d2)
    return x


def _dpmpp_multistep(
    model: ModelFn, diffusion: GaussianDiffusion, noise: torch.Tensor, max_order: int, clip_denoised: bool,
    callback: Callback | None,
) -> torch.Tensor:
    """DPM-Solver++ multistep of order up to ``max_order``: the order rises as x_0
    estimates accumulate and falls again towards the end, the step into t = 0 being
    first order (see :func:`sample_dpmpp_2m`)."""
    alpha_bar = [float(a) for a in diffusion.alphas_cumprod]
    x = noise.float()
    history: list[tuple[torch.Tensor, float]] = []
    for k, (i, t) in enumerate(_timesteps(diffusion, x), start=1):
        x0 = _denoise(diffusion, model(x, diffusion.model_timesteps(t)), x, t, clip_denoised)
        history = [(x0, _half_log_snr(alpha_bar[i]))] + history[: max_order - 1]
        if i == 0:
            x = x0
        else:
            x = _multistep_update(x, history, alpha_bar[i], alpha_bar[i - 1], min(max_order, len(history), i))
        _report(callback, diffusion, k, i, x, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    noise: torch.Tensor,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    clip_denoised: bool = True,
    callback: Callback | None = None,
    eta: float | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): the probability-flow ODE in data-prediction
    form, second order from the previous step's x_0 estimate, one network call per step
    of the respaced process. Deterministic given the noise (``generator`` is unused).

    Between steps t -> s with h = lambda_s - lambda_t and r = h_prev / h:
    D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev and
    x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) D. The first step and the last
    one use D = x0_t: evenly spaced timesteps make the last step in lambda several
    times longer than the one before (1.9 -> 4.6 against 1.3 -> 1.9 at 25 steps of the
    linear schedule), and extrapolating x_0 that far costs more accuracy than the
    second order gains (DPM-Solver's "lower order final"). The last call returns its
    x_0 estimate, as the other samplers end on theirs.
    """
    if eta is not None:
        raise ValueError("eta is a setting of DDIM sampling only")
    return _dpmpp_multistep(model, diffusion, noise, 2, clip_denoised, callback)


@torch.no_grad()
def sample_dpmpp_3m(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    noise: torch.Tensor,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    clip_denoised: bool = True,
    callback: Callback | None = None,
    eta: float | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M): as ``dpm++2m``, third order from the two previous x_0
    estimates once there are two; second order on the second step and on the step
    before the last, first order on the first and the last. On the trained miniature
    models it kept no more than 2M at the same calls (docs/performance.md)."""
    if eta is not None:
        raise ValueError("eta is a setting of DDIM sampling only")
    return _dpmpp_multistep(model, diffusion, noise, 3, clip_denoised, callback)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpm++2m": sample_dpmpp_2m,
    "dpm++3m": sample_dpmpp_3m,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UsageError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}") from None
