"""The preview grids a run writes every --sample-every steps: a few fixed training
images, each beside samples of the EMA model conditioned on its representation,
and a warning when the model ignores its conditioning so far.

:class:`Previews` is a part of :class:`rcdm_cli.training.loop.Trainer`, kept apart
so that the loop reads without it; it uses the trainer's attributes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from rcdm_cli.diffusion.unet import UNet
from rcdm_cli.errors import RcdmError
from rcdm_cli.imaging import make_grid, save_png, to_pil
from rcdm_cli.pipeline.diagnostics import conditioning_effect, ignores_conditioning
from rcdm_cli.pipeline.model import RCDMModel
from rcdm_cli.pipeline.sampling import SampleBatchProgress, SamplingOptions, sample_representations
from rcdm_cli.training import distributed as dist_util
from rcdm_cli.training.data import make_views


class Previews:
    """Choosing, encoding and drawing the previews (a part of ``Trainer``)."""

    def _choose_previews(self) -> None:
        """The conditioning images of the previews: the first files (in sorted order)
        that decode, chosen before any slow work; no decodable image at all is an error
        here, on every process."""
        cfg = self.config
        self.preview_inputs, self.preview_views = [], []
        if self.world.is_main:
            for p in self.paths:
                if len(self.preview_views) == cfg.preview_images:
                    break
                try:
                    with Image.open(p) as im:
                        im.load()
                        target, enc_view = make_views(im, self.views, None, False)
                except Exception:  # noqa: BLE001 - an undecodable file is not a preview
                    continue
                self.preview_inputs.append(to_pil(target))
                self.preview_views.append(enc_view)
        if dist_util.any_true(self.world.is_main and not self.preview_views, self.world, self.device):
            raise RcdmError(f"none of the {len(self.paths)} images under {cfg.data} could be decoded")

    def _encode_previews(self) -> None:
        if self.world.is_main:
            with torch.no_grad():
                self.preview_reps = self.encoder(torch.stack(self.preview_views).to(self.device), self.layer).float().cpu()

    def _preview(self) -> Path:
        """Sample the preview grid (the run waits for it: say so, and how far it is)."""
        cfg = self.config
        rate = self.ema.rates[0]
        with torch.device("meta"):
            unet = UNet(self.unet_config)
        unet.load_state_dict(self.ema.shadows[rate], assign=True)
        unet.eval().requires_grad_(False)
        model = RCDMModel(unet, self._meta(), self.device)
        options = SamplingOptions(sampler="ddim", steps=cfg.preview_steps, seed=cfg.seed, batch_size=max(1, cfg.batch_size))
        count = len(self.preview_inputs) * cfg.preview_samples
        self.reporter.event(f"step {self.step}: sampling {count} preview images (DDIM, {cfg.preview_steps})")
        task = f"sampling the previews of step {self.step}"

        def progress(p: SampleBatchProgress) -> None:
            self.reporter.progress(task, (p.batch - 1) * p.steps + p.step, p.batches * p.steps)

        samples = sample_representations(model, self.preview_reps, cfg.preview_samples, options, progress=progress).samples
        effect = conditioning_effect(model, self.preview_reps, seed=cfg.seed)
        if ignores_conditioning(effect):
            self.reporter.warning(
                f"preview at step {self.step}: the model ignores its conditioning so far (its image changes by "
                f"{effect:.2f} grey levels between representations); {self._why_ignored()}"
            )
        tiles, labels = [], []
        for j, cond in enumerate(self.preview_inputs):
            tiles.append(cond)
            labels.append("input")
            for k in range(cfg.preview_samples):
                tiles.append(to_pil(samples[j, k]))
                labels.append(f"#{k}")
        path = self.run_dir.previews / f"step-{self.step:07d}.png"
        save_png(make_grid(tiles, labels, columns=cfg.preview_samples + 1), path)
        self.reporter.event(f"preview: {path}")
        return path

    def _why_ignored(self) -> str:
        rate = self.ema.rates[0]
        if not self.config.ema_warmup and self.step < 1 / (1 - rate):
            return (
                f"the EMA at rate {rate:g} without warm-up still holds mostly the initial weights after {self.step} steps; "
                "train longer, or sample the raw weights with --weights-set model"
            )
        return "train longer, or check that the representations of the training images differ"
