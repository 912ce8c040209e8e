"""An RCDM ready to run: the UNet with its weights, the diffusion, and the metadata,
and the network call the samplers make (representation guidance included).

The ways of running that call faster live in :mod:`rcdm_cli.acceleration`, shared
with training; each changes only the network call, so every sampler works
unchanged on top of it.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from rcdm_cli.acceleration import (
    CompiledOrEager, GraphedCall, Speed, autocast, check_precision, memory_format, warn_if_emulated,
)
from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.checkpoint.resolve import ResolvedCheckpoint
from rcdm_cli.diffusion.gaussian import GaussianDiffusion
from rcdm_cli.diffusion.unet import UNet
from rcdm_cli.download_cache import Progress

log = logging.getLogger("rcdm.model")


class RCDMModel:
    def __init__(self, unet: UNet, meta: CheckpointMeta, device: torch.device, speed: Speed | None = None):
        self.unet = unet
        self.meta = meta
        self.device = torch.device(device)
        self.speed: Speed | None = None  # None: the plain float32 eager call, as released
        self._network: Callable = unet
        self._channels_last = False
        self._graphs: dict[tuple, GraphedCall] = {}
        self._graphs_failed = False
        if speed is not None:
            self.accelerate(speed)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: ResolvedCheckpoint,
        device: torch.device | str = "cpu",
        init_seed: int = 0,
        progress: Progress | None = None,
        speed: Speed | None = None,
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
        return cls(unet, ckpt.meta, device, speed)

    @property
    def image_size(self) -> int:
        return self.meta.image_size

    @property
    def rep_dim(self) -> int | None:
        return self.meta.rep_dim

    def diffusion(self, steps: str | None = None) -> GaussianDiffusion:
        """The trained process respaced to ``steps`` (official syntax: 100, ddim25, ...)."""
        return GaussianDiffusion.from_config(self.meta.diffusion, respacing=steps or "")

    def accelerate(self, speed: Speed | None) -> None:
        """Run the network as ``speed`` says from now on; ``None`` restores the plain
        call. The same settings again do nothing (a compiled network is kept)."""
        if speed == self.speed:
            return
        if speed is not None:
            check_precision(speed.precision, self.device)
            warn_if_emulated(speed.precision, self.device)
        channels_last = speed is not None and speed.wants_channels_last(self.device)
        if channels_last != self._channels_last:
            self.unet.to(memory_format=memory_format(channels_last))
            self._channels_last = channels_last
        compile_now = speed is not None and speed.compile
        if compile_now != isinstance(self._network, CompiledOrEager):
            self._network = CompiledOrEager(self.unet, dynamic=False) if compile_now else self.unet
        self._graphs.clear()
        self._graphs_failed = False
        self.speed = speed

    def forward(self, x: torch.Tensor, t: torch.Tensor, reps: torch.Tensor, *, graph_safe: bool = False) -> torch.Tensor:
        """The network's float32 output, whatever precision it ran in."""
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        precision = self.speed.precision if self.speed is not None else "fp32"
        with autocast(self.device, precision, cache=not graph_safe):
            out = self._network(x, t, reps)
        return out.float()

    def _graphed(self, x: torch.Tensor, t: torch.Tensor, reps: torch.Tensor) -> torch.Tensor | None:
        """The output through a captured CUDA graph, or None where graphs do not apply."""
        speed = self.speed
        if speed is None or not speed.cuda_graphs or not x.is_cuda or self._graphs_failed:
            return None
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype, tuple(reps.shape))
        call = self._graphs.get(key)
        if call is None:
            try:
                call = GraphedCall(lambda a, b, c: self.forward(a, b, c, graph_safe=True), x, t, reps)
            except Exception as exc:  # noqa: BLE001 - capture is an optimisation; run eagerly
                self._graphs_failed = True
                log.warning("CUDA graph capture failed (%s: %s); sampling without graphs", type(exc).__name__, exc)
                return None
            self._graphs[key] = call
        return call(x, t, reps)

    def denoiser(self, reps: torch.Tensor, guidance: float = 1.0):
        """``model(x_t, t)`` with the representations bound, for the samplers.

        ``guidance`` W != 1 is classifier-free guidance on the representation: the
        prediction given the representation is pushed away from the prediction given
        the learned null representation, ``uncond + W (cond - uncond)``, both from one
        network call over the doubled batch. Only the mean's channels are combined; a
        learned variance is the conditional one. W = 1 is the plain call."""
        reps = reps.to(self.device)
        if self.speed is None:
            def call(x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                return self.unet(x, t, r)
        else:
            def call(x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                out = self._graphed(x, t, r)
                return out if out is not None else self.forward(x, t, r)

        if guidance == 1.0:
            return lambda x, t: call(x, t, reps)
        both_reps = torch.cat([reps, self.unet.null_representations(reps.shape[0]).detach().to(reps.dtype)])
        channels = self.unet.config.in_channels

        def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            cond, uncond = call(torch.cat([x, x]), torch.cat([t, t]), both_reps).chunk(2)
            mean = uncond[:, :channels] + guidance * (cond[:, :channels] - uncond[:, :channels])
            return torch.cat([mean, cond[:, channels:]], dim=1)

        return guided
