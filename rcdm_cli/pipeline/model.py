"""An RCDM ready to run: the UNet with its weights, the diffusion, and the metadata."""

from __future__ import annotations

import torch

from rcdm_cli.checkpoint.download import Progress
from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.checkpoint.resolve import ResolvedCheckpoint
from rcdm_cli.diffusion.gaussian import GaussianDiffusion
from rcdm_cli.diffusion.unet import UNet


class RCDMModel:
    def __init__(self, unet: UNet, meta: CheckpointMeta, device: torch.device):
        self.unet = unet
        self.meta = meta
        self.device = device

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: ResolvedCheckpoint,
        device: torch.device | str = "cpu",
        init_seed: int = 0,
        progress: Progress | None = None,
    ) -> "RCDMModel":
        device = torch.device(device)
        state = ckpt.load(progress)
        if state is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                unet = UNet(ckpt.meta.unet)
        else:
            with torch.device("meta"):
                unet = UNet(ckpt.meta.unet)
            unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
        unet.eval().requires_grad_(False).to(device)
        return cls(unet, ckpt.meta, device)

    @property
    def image_size(self) -> int:
        return self.meta.image_size

    @property
    def rep_dim(self) -> int | None:
        return self.meta.rep_dim

    def diffusion(self, steps: str | None = None) -> GaussianDiffusion:
        """The trained process respaced to ``steps`` (official syntax: 100, ddim25, ...)."""
        return GaussianDiffusion.from_config(self.meta.diffusion, respacing=steps or "")

    def denoiser(self, reps: torch.Tensor):
        """``model(x_t, t)`` with the representations bound, for the samplers."""
        reps = reps.to(self.device)

        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.unet(x, t, reps)

        return model
