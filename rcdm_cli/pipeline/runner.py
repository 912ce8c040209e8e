"""One generation run: a checkpoint, the representation that conditions it, and
sampling, shared by ``sample``, ``interpolate``, ``arith`` and ``attack``.

``prepare`` does every check that needs only metadata; the encoder and the model
are built (and downloaded) on first use, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from PIL import Image

from rcdm_cli.checkpoint.hashing import file_sha256
from rcdm_cli.checkpoint.resolve import ResolvedCheckpoint, resolve_checkpoint
from rcdm_cli.download_cache import Progress
from rcdm_cli.encoders import Encoder, UnknownLayer, resolve_encoder
from rcdm_cli.pipeline.conditioning import ConditioningPlan, default_checkpoint, plan_conditioning
from rcdm_cli.pipeline.diagnostics import conditioning_effect
from rcdm_cli.pipeline.model import RCDMModel
from rcdm_cli.pipeline.sampling import (
    SampleBatchProgress, SampleResult, SamplingOptions, check_request, resolve_sampling, sample_representations,
)


@dataclass
class RCDMRun:
    spec: str
    checkpoint: ResolvedCheckpoint
    plan: ConditioningPlan | None
    device: torch.device
    download_progress: Progress | None = None
    _encoder: Encoder | None = field(default=None, repr=False)
    _model: RCDMModel | None = field(default=None, repr=False)

    @classmethod
    def prepare(
        cls,
        *,
        checkpoint: str | None,
        encoder: str | None = None,
        layer: str | None = None,
        weights: str | None = None,
        preprocessing: str | None = None,
        device: torch.device | str = "cpu",
        images: bool = True,
        rep_dim: int | None = None,
        download_progress: Progress | None = None,
        weight_set: str | None = None,
    ) -> "RCDMRun":
        """Resolve the checkpoint and, when images will be encoded, the encoder.
        ``weight_set`` picks the weights of a trained run (``ema``, ``model`` or a
        set's name); the default is the checkpoint's own (its EMA)."""
        spec = checkpoint or default_checkpoint(encoder, layer)
        if images and rep_dim is None and encoder and spec.startswith("init:"):
            try:
                rep_dim = resolve_encoder(encoder, layer).dim
            except UnknownLayer:
                rep_dim = None  # planning the conditioning below refuses the layer, in its own words
        ckpt = resolve_checkpoint(spec, rep_dim=rep_dim, weights=weight_set)
        plan = (
            plan_conditioning(ckpt.meta, encoder=encoder, layer=layer, weights_path=weights, preprocessing=preprocessing)
            if images
            else None
        )
        return cls(spec, ckpt, plan, torch.device(device), download_progress)

    @property
    def meta(self):
        return self.checkpoint.meta

    def resolve(self, options: SamplingOptions) -> SamplingOptions:
        """The options with "auto" sampler and steps made concrete for this model (what
        a manifest records)."""
        return resolve_sampling(self.meta, options)

    def check(self, reps: torch.Tensor | None, n: int, options: SamplingOptions):
        return check_request(self.meta, reps, n, options, self.device)

    @property
    def encoder(self) -> Encoder:
        if self.plan is None:
            raise RuntimeError("this run conditions on vectors, it has no encoder")
        if self._encoder is None:
            _check_offline_files(self.spec, self.plan)
            self._encoder = self.plan.build(self.device, progress=self.download_progress)
        return self._encoder

    def encode(self, pictures: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        rows = [self.encoder.encode(pictures[i : i + batch_size], self.plan.layer).cpu() for i in range(0, len(pictures), batch_size)]
        return torch.cat(rows)

    @property
    def model(self) -> RCDMModel:
        if self._model is None:
            _check_offline_files(self.spec, self.plan)
            self._model = RCDMModel.from_checkpoint(self.checkpoint, self.device, progress=self.download_progress)
        return self._model

    def sample(
        self,
        reps: torch.Tensor,
        n: int,
        options: SamplingOptions,
        *,
        noise: torch.Tensor | None = None,
        same_noise: bool = False,
        progress: Callable[[SampleBatchProgress], None] | None = None,
        on_row: Callable[[int, torch.Tensor], None] | None = None,
        first_row: int = 0,
    ) -> SampleResult:
        return sample_representations(
            self.model, reps, n, options, noise=noise, same_noise=same_noise, progress=progress, on_row=on_row,
            first_row=first_row,
        )

    def conditioning_effect(self, reps: torch.Tensor, options: SamplingOptions) -> float:
        """How much the model's image changes between representations, in grey
        levels (:mod:`rcdm_cli.pipeline.diagnostics`)."""
        return conditioning_effect(self.model, reps, guidance=options.guidance, seed=options.seed)

    def checkpoint_info(self) -> dict:
        ckpt = self.checkpoint
        return {
            "spec": self.spec,
            "path": str(ckpt.path) if ckpt.path else None,
            "sha256": file_sha256(ckpt.path) if ckpt.path and ckpt.path.exists() else None,
            "weight_set": ckpt.weight_set,
            "description": ckpt.meta.describe(),
            "source": ckpt.meta.source,
        }

    def encoder_info(self) -> dict | None:
        if self.plan is None:
            return None
        info = self.plan.describe()
        if self._encoder is not None:
            info.update(weights=self._encoder.weights_id, weights_file=self._encoder.weights_file, plugin=self._encoder.plugin)
        return info


def _check_offline_files(spec: str, plan: ConditioningPlan | None) -> None:
    """The released checkpoint and the encoder's weights, missing offline, in one error."""
    from rcdm_cli.checkpoint.resolve import released_download
    from rcdm_cli.download_cache import check_offline

    weights = None
    if plan is not None and plan.weights_path is None:  # a local --weights file needs no download
        weights = (plan.resolved or resolve_encoder(plan.encoder, plan.layer)).download()
    check_offline([released_download(spec), weights])
