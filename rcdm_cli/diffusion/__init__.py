"""The engine: UNet, Gaussian diffusion, samplers and presets.

Pure tensors in, tensors out: no files, no printing, no encoders. The caller binds a
representation to the network and hands the samplers a plain ``model(x_t, t)``.
"""

from rcdm_cli.diffusion.config import PRESETS, DiffusionConfig, Preset, UNetConfig, get_preset
from rcdm_cli.diffusion.gaussian import GaussianDiffusion, PosteriorParams, randn
from rcdm_cli.diffusion.respace import space_timesteps
from rcdm_cli.diffusion.samplers import (
    SAMPLERS,
    ddim_step,
    ddpm_step,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
)
from rcdm_cli.diffusion.timestep_samplers import (
    TIMESTEP_SAMPLERS,
    LossSecondMomentSampler,
    UniformSampler,
    create_timestep_sampler,
)
from rcdm_cli.diffusion.unet import UNet, count_parameters

__all__ = [
    "PRESETS",
    "SAMPLERS",
    "TIMESTEP_SAMPLERS",
    "DiffusionConfig",
    "GaussianDiffusion",
    "LossSecondMomentSampler",
    "PosteriorParams",
    "Preset",
    "UNet",
    "UNetConfig",
    "UniformSampler",
    "count_parameters",
    "create_timestep_sampler",
    "ddim_step",
    "ddpm_step",
    "get_preset",
    "get_sampler",
    "randn",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "space_timesteps",
]
