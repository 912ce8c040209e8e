"""DPM-Solver++(2M) and (3M) against an exactly solvable case.

For data x_0 ~ N(mu, s^2 I) the optimal noise predictor is linear,
eps*(x_t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar),
and the probability-flow ODE keeps z = (x_t - sqrt(abar) mu) / sqrt(abar s^2 + 1 - abar)
constant, so the exact answer of any ODE sampler is known in closed form.
"""

import math

import pytest
import torch

from rcdm_cli.diffusion import DiffusionConfig, GaussianDiffusion
from rcdm_cli.diffusion.samplers import SAMPLERS, get_sampler, sample_ddim, sample_dpmpp_2m, sample_dpmpp_3m
from rcdm_cli.errors import UsageError

SIZE = (2, 3, 8, 8)
SCALE = 0.5  # s: the data's standard deviation


@pytest.fixture(scope="module")
def base():
    return GaussianDiffusion.from_config(DiffusionConfig())


@pytest.fixture(scope="module")
def mu():
    return 0.5 * torch.sin(torch.arange(math.prod(SIZE[1:]), dtype=torch.float32)).reshape(SIZE[1:])


class GaussianDataModel:
    """The optimal learned-sigma network for Gaussian data; records the timesteps it
    is called with (original indices, as a trained network expects)."""

    def __init__(self, base: GaussianDiffusion, mu: torch.Tensor):
        self.alpha_bar = torch.from_numpy(base.alphas_cumprod)
        self.mu = mu
        self.timesteps: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(int(t[0]))
        a = self.alpha_bar[t].reshape(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x.double() - a.sqrt() * self.mu) / (a * SCALE**2 + 1 - a)
        return torch.cat([eps.float(), torch.zeros_like(x)], dim=1)


def exact_answer(spaced: GaussianDiffusion, mu: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
    """The ODE carried exactly from the first kept timestep to the last, then denoised
    with the optimal model, which is where every sampler of this package ends."""
    a_T, a_0 = (float(spaced.alphas_cumprod[i]) for i in (-1, 0))
    z = (x_T.double() - math.sqrt(a_T) * mu) / math.sqrt(a_T * SCALE**2 + 1 - a_T)
    x = math.sqrt(a_0) * mu + math.sqrt(a_0 * SCALE**2 + 1 - a_0) * z
    eps = math.sqrt(1 - a_0) * (x - math.sqrt(a_0) * mu) / (a_0 * SCALE**2 + 1 - a_0)
    return (x - math.sqrt(1 - a_0) * eps) / math.sqrt(a_0)


def _noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SIZE, generator=torch.Generator().manual_seed(seed))


def _error(sampler, base, mu, steps: str) -> float:
    """Relative error of a sampler's result against the exact one."""
    spaced = base.respace(steps)
    x_T = _noise()
    out = sampler(GaussianDataModel(base, mu), spaced, x_T.clone(), clip_denoised=False)
    exact = exact_answer(spaced, mu, x_T)
    return ((out.double() - exact).norm() / exact.norm()).item()


def test_dpmpp_2m_at_25_steps_is_close_to_the_exact_ode_and_beats_ddim(base, mu):
    dpm = _error(sample_dpmpp_2m, base, mu, "25")
    ddim = _error(sample_ddim, base, mu, "25")
    assert dpm < 0.03
    assert dpm < ddim / 4


def test_dpmpp_2m_error_falls_faster_than_ddims(base, mu):
    """Doubling the steps cuts a first-order method's error in half and DPM-Solver++'s
    by far more."""
    assert _error(sample_ddim, base, mu, "50") > _error(sample_ddim, base, mu, "25") / 2.5
    assert _error(sample_dpmpp_2m, base, mu, "50") < _error(sample_dpmpp_2m, base, mu, "25") / 4


def test_dpmpp_2m_calls_the_network_with_original_timesteps(base, mu):
    model = GaussianDataModel(base, mu)
    steps = []
    sample_dpmpp_2m(model, base.respace("ddim10"), _noise(), callback=lambda info: steps.append((info["step"], info["t"])))
    assert model.timesteps == list(range(900, -1, -100))
    assert steps == list(zip(range(1, 11), range(900, -1, -100)))


def test_dpmpp_2m_depends_only_on_the_noise(base, mu):
    spaced = base.respace("10")
    model = GaussianDataModel(base, mu)
    a = sample_dpmpp_2m(model, spaced, _noise(0), generator=torch.Generator().manual_seed(1))
    b = sample_dpmpp_2m(model, spaced, _noise(0), generator=torch.Generator().manual_seed(2))
    c = sample_dpmpp_2m(model, spaced, _noise(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_dpmpp_2m_clips_its_estimates(base, mu):
    out = sample_dpmpp_2m(GaussianDataModel(base, 4 * mu), base.respace("10"), 3 * _noise())
    assert out.abs().max() <= 1.0


def test_dpmpp_2m_refuses_eta_and_unknown_options(base, mu):
    model = GaussianDataModel(base, mu)
    with pytest.raises(ValueError, match="DDIM"):
        sample_dpmpp_2m(model, base.respace("5"), _noise(), eta=0.0)
    with pytest.raises(TypeError):
        sample_dpmpp_2m(model, base.respace("5"), _noise(), order=3)
    with pytest.raises(UsageError, match="dpm\\+\\+2m, dpm\\+\\+3m"):
        get_sampler("dpm++4m")
    assert SAMPLERS["dpm++2m"] is sample_dpmpp_2m
    with pytest.raises(ValueError, match="DDIM"):
        sample_dpmpp_3m(model, base.respace("5"), _noise(), eta=0.5)


def test_dpmpp_3m_is_third_order(base, mu):
    """Doubling the steps cuts a third-order method's error eightfold, less the
    first-order steps at both ends: more than 2M's fourfold, and it is closer."""
    at_25, at_50 = _error(sample_dpmpp_3m, base, mu, "25"), _error(sample_dpmpp_3m, base, mu, "50")
    assert at_50 < at_25 / 8
    assert at_25 < _error(sample_dpmpp_2m, base, mu, "25")
    assert at_50 < _error(sample_dpmpp_2m, base, mu, "50") / 2


def test_dpmpp_3m_calls_the_network_once_per_step_with_original_timesteps(base, mu):
    model = GaussianDataModel(base, mu)
    sample_dpmpp_3m(model, base.respace("ddim10"), _noise())
    assert model.timesteps == list(range(900, -1, -100))


def test_log_snr_spacing_makes_few_steps_accurate(base, mu):
    """Evenly spaced in log-SNR, 10 steps of 2M come within 2% of the exact ODE
    (evenly spaced in time: 17%)."""
    assert _error(sample_dpmpp_2m, base, mu, "logsnr10") < 0.02
    assert _error(sample_dpmpp_2m, base, mu, "10") > 0.1
