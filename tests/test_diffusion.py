import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import rel_err
from rcdm_cli.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    LossSecondMomentSampler,
    UniformSampler,
    ddim_step,
    sample_ddim,
    sample_ddpm,
    space_timesteps,
)
from rcdm_cli.diffusion.schedules import cosine_betas, linear_betas
from rcdm_cli.errors import UsageError


@pytest.fixture(scope="module")
def ref(request):
    reference_dir = request.getfixturevalue("reference_dir")
    return (
        load_file(str(reference_dir / "official-diffusion-linear.safetensors")),
        json.loads((reference_dir / "official-diffusion-linear.json").read_text()),
    )


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion.from_config(DiffusionConfig())


def _inputs(tensors):
    return tensors["input.x_start"], tensors["input.noise"], tensors["input.t"], tensors["input.model_output"]


def test_linear_schedule_matches(ref, diffusion):
    tensors, _ = ref
    assert rel_err(torch.from_numpy(diffusion.betas), tensors["betas"]) < 1e-12


def test_q_sample_and_posterior_match(ref, diffusion):
    tensors, _ = ref
    x0, noise, t, out = _inputs(tensors)
    x_t = diffusion.q_sample(x0, t, noise)
    assert rel_err(x_t, tensors["expected.q_sample"]) < 1e-6
    params = diffusion.p_mean_variance(out, x_t, t, clip_denoised=True)
    for name in ("mean", "variance", "log_variance", "pred_xstart"):
        assert rel_err(getattr(params, name), tensors[f"expected.p_mean_variance.{name}"]) < 1e-6, name


def test_training_losses_match(ref, diffusion):
    tensors, _ = ref
    x0, noise, t, out = _inputs(tensors)
    seen = []

    def model(x_t, model_t):
        seen.append(model_t.clone())
        return out

    losses = diffusion.training_losses(model, x0, t, noise=noise)
    for name in ("mse", "vb", "loss"):
        assert rel_err(losses[name], tensors[f"expected.training_losses.{name}"]) < 1e-6, name
    assert torch.equal(seen[0], t)


def test_ddim_step_matches(ref, diffusion):
    tensors, _ = ref
    x0, noise, t, out = _inputs(tensors)
    x_t = diffusion.q_sample(x0, t, noise)
    x_prev, _ = ddim_step(diffusion, out, x_t, t, eta=0.0)
    assert rel_err(x_prev, tensors["expected.ddim_step.sample"]) < 1e-6


@pytest.mark.parametrize("spec", ["100", "ddim25", "10,15,20"])
def test_respacing_matches(ref, diffusion, spec):
    tensors, meta = ref
    spaced = diffusion.respace(spec)
    assert spaced.timestep_map == meta["respacing"][spec]
    assert space_timesteps(1000, spec) == meta["respacing"][spec]
    assert rel_err(torch.from_numpy(spaced.betas), tensors[f"expected.respaced.{spec}.betas"]) < 1e-6


def test_respaced_process_keeps_the_noise_levels(diffusion):
    spaced = diffusion.respace("ddim50")
    kept = spaced.timestep_map
    assert np.allclose(spaced.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=1e-12)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ddimx", "ddimN"), ("ddim999", "no stride"), ("10;20", "expected a count"), ("0", "positive"), ("600,600", "section of 500"),
        ("quad", "quadN"), ("logsnrx", "logsnrN"), ("quad1", "between 2 and 1000"), ("logsnr1001", "between 2 and 1000"),
    ],
)
def test_bad_respacing_specs(spec, message):
    with pytest.raises(UsageError, match=message):
        space_timesteps(1000, spec)


@pytest.mark.parametrize("prefix", ["quad", "logsnr"])
def test_dense_end_spacings_keep_both_ends_and_exactly_the_count_asked(diffusion, prefix):
    for count in [*range(2, 40), *range(40, 1001, 61), 999, 1000]:
        kept = space_timesteps(1000, f"{prefix}{count}", diffusion.alphas_cumprod)
        assert len(kept) == count and kept[0] == 0 and kept[-1] == 999
        assert all(a < b for a, b in zip(kept, kept[1:]))


def test_dense_end_spacings_put_their_steps_near_t0(diffusion):
    """Both put more steps where the image is decided than even spacing does."""
    assert space_timesteps(1000, "quad10") == [0, 12, 49, 111, 197, 308, 444, 604, 789, 999]  # 999 (i/9)^2
    kept = space_timesteps(1000, "logsnr10", diffusion.alphas_cumprod)
    lam = 0.5 * np.log(diffusion.alphas_cumprod / (1 - diffusion.alphas_cumprod))
    gaps = np.diff(lam[kept])
    assert np.all(gaps < 0)
    assert gaps[1:-1].max() / gaps[1:-1].min() < 1.3  # even in log-SNR, but for rounding at the ends
    assert kept[1] < space_timesteps(1000, "10")[1] / 10
    # the process respaces with its own schedule
    assert diffusion.respace("logsnr10").timestep_map == kept


def test_empty_spec_keeps_everything():
    assert space_timesteps(10, "") == list(range(10))
    assert space_timesteps(10, "10") == list(range(10))


def test_cosine_schedule():
    betas = cosine_betas(1000)
    assert betas.max() <= 0.999 and betas.min() > 0
    acp = np.cumprod(1 - betas)
    expected = np.cos((np.arange(1, 1001) / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    assert np.allclose(acp[:-5], expected[:-5], rtol=1e-9)


def test_linear_schedule_rescales_with_step_count():
    assert np.isclose(linear_betas(100)[0], 0.001) and np.isclose(linear_betas(100)[-1], 0.2)


class RecordingModel:
    """A stand-in network: a fixed function of its inputs that records the timesteps."""

    def __init__(self):
        self.timesteps = []

    def __call__(self, x, t):
        self.timesteps.append(int(t[0]))
        return torch.cat([0.1 * x + 0.001 * t.float().reshape(-1, 1, 1, 1), torch.tanh(x)], dim=1)


@pytest.mark.parametrize("sampler", [sample_ddpm, sample_ddim])
def test_samplers_call_the_network_with_original_timesteps(diffusion, sampler):
    spaced = diffusion.respace("ddim10")
    model = RecordingModel()
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    steps = []
    sampler(model, spaced, noise, generator=torch.Generator().manual_seed(1), callback=lambda i: steps.append(i["step"]))
    assert model.timesteps == list(range(900, -1, -100))
    assert steps == list(range(1, 11))


def test_ddpm_is_reproducible_with_a_seed_and_varies_without(diffusion):
    spaced = diffusion.respace("20")
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def run(seed):
        return sample_ddpm(RecordingModel(), spaced, noise.clone(), generator=torch.Generator().manual_seed(seed))

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ddim_eta0_depends_only_on_the_noise(diffusion):
    spaced = diffusion.respace("ddim20")
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = sample_ddim(RecordingModel(), spaced, noise.clone(), generator=torch.Generator().manual_seed(1))
    b = sample_ddim(RecordingModel(), spaced, noise.clone(), generator=torch.Generator().manual_seed(2))
    c = sample_ddim(RecordingModel(), spaced, noise.clone(), generator=torch.Generator().manual_seed(1), eta=1.0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_samples_are_clipped_predictions_at_the_end(diffusion):
    """With clip_denoised the last step returns the clipped x0 estimate's posterior mean
    at t=0, which equals x0 itself, so samples lie in [-1, 1]."""
    spaced = diffusion.respace("10")
    noise = 3 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = sample_ddpm(RecordingModel(), spaced, noise, generator=torch.Generator().manual_seed(0))
    assert out.abs().max() <= 1.0 + 1e-6


def test_eta_with_ddpm_is_refused(diffusion):
    with pytest.raises(ValueError, match="DDIM"):
        sample_ddpm(RecordingModel(), diffusion.respace("5"), torch.zeros(1, 3, 4, 4), eta=0.5)


def test_uniform_timestep_sampler():
    sampler = UniformSampler(10)
    t, w = sampler.sample(1000, "cpu", torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 9 and len(t.unique()) == 10
    assert torch.allclose(w, torch.ones(1000))


def test_loss_second_moment_sampler_weights_follow_losses():
    sampler = LossSecondMomentSampler(4, history=2, uniform_prob=0.0)
    assert np.allclose(sampler.weights(), 1.0)
    for _ in range(2):
        sampler.update(torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 1.0, 1.0, 5.0]))
    assert sampler.warmed_up()
    w = sampler.weights()
    assert np.isclose(w[3] / w[0], 5.0)
    t, weights = sampler.sample(4000, "cpu", torch.Generator().manual_seed(0))
    share = (t == 3).float().mean().item()
    assert 0.55 < share < 0.70  # expected 5/8
    # importance weights undo the non-uniform sampling
    assert torch.allclose(weights[t == 3], torch.full_like(weights[t == 3], 1 / (4 * 5 / 8)))
    restored = LossSecondMomentSampler(4, history=2, uniform_prob=0.0)
    restored.load_state_dict(sampler.state_dict())
    assert np.allclose(restored.weights(), w)


def test_training_loss_is_reproducible_with_a_generator(diffusion):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    t = torch.tensor([10, 500])
    model = RecordingModel()
    a = diffusion.training_losses(model, x0, t, generator=torch.Generator().manual_seed(3))["loss"]
    b = diffusion.training_losses(model, x0, t, generator=torch.Generator().manual_seed(3))["loss"]
    assert torch.equal(a, b)
