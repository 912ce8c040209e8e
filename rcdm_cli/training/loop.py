"""The training loop.

Reproducibility: every random draw except dropout is a function of the seed and of
*where* it is used (the step, the sample's position in the global batch, the image and
epoch for augmentation), never of the process count or of the data-loader workers. A
run under torchrun with W processes of batch b therefore takes the same steps as one
process of batch W*b, and so does a run split into microbatches, for presets without
dropout (``tiny``, ``rcdm-128``, ``rcdm-256``). Dropout masks (``rcdm-64`` has dropout
0.1) are drawn per process and step over each process's (micro)batch, so there the
runs differ, though each is still reproducible with the same layout. A resumed run
continues exactly where the saved one stopped: the RNG state is implied by the step,
which the checkpoint stores with the optimizer, the EMA weights, the loss-aware
sampler's history and the data position.

Stop signals (SIGTERM, SIGUSR1) are caught from the start of ``run``: during setup
(loading the encoder, computing the feature cache) the run stops without saving, as
there is nothing new to save; during training it saves and stops. Under torchrun every
decision to stop, skip or fail is taken jointly, so the processes never disagree about
which collective comes next.

The trainer's other jobs have modules of their own: what it tells its caller
(``reporting``), the stop signals (``signals``), its checkpoints and resuming
(``run_state``), the preview grids (``previews``), the network's fast paths
(:mod:`rcdm_cli.acceleration`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path

import torch
from torch import nn

from rcdm_cli.acceleration import CompiledOrEager, autocast, check_precision, memory_format, warn_if_emulated
from rcdm_cli.checkpoint.hashing import file_sha256
from rcdm_cli.checkpoint.metadata import EncoderInfo
from rcdm_cli.checkpoint.resolve import released_download
from rcdm_cli.checkpoint.rundir import RunDir
from rcdm_cli.diffusion.gaussian import GaussianDiffusion
from rcdm_cli.diffusion.timestep_samplers import create_timestep_sampler
from rcdm_cli.diffusion.unet import UNet, count_parameters
from rcdm_cli.download_cache import check_offline
from rcdm_cli.encoders import Encoder, resolve_encoder
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.preprocessing import RCDM, Preprocessing
from rcdm_cli.seeding import stream_seed
from rcdm_cli.training import distributed as dist_util
from rcdm_cli.training.config import TrainConfig
from rcdm_cli.training.data import (
    REPLACEMENT_TRIES, StepBatches, TrainingImages, Views, collate, ignore_stop_signals, scan_images, start_loader,
)
from rcdm_cli.training.ema import EMA
from rcdm_cli.training.features import Stopped, load_or_compute
from rcdm_cli.training.previews import Previews
from rcdm_cli.training.reporting import Reporter, TrainSummary
from rcdm_cli.training.run_state import RunState
from rcdm_cli.training.signals import StopSignals
from rcdm_cli.training.warmstart import (
    Parent, conditioning_path, drop_frozen_gradients, load_parent, resolve_parent, set_trainable,
)

log = logging.getLogger("rcdm.train")

NOISE = 3  # stream tag for timesteps and noise (data.py uses 1 and 2)
DROPOUT = 4
COND_DROP = 5  # which samples train the null representation (--cond-drop)
# Steps in a row that may find a batch position with no decodable image (after
# REPLACEMENT_TRIES replacements each) before the data is declared unusable.
MAX_EMPTY_BATCHES = 10


def encoder_preprocessing(choice: str, native: Preprocessing) -> Preprocessing:
    """The encoder view used in training: always the image's central square (so the
    diffusion target and the encoder see the same region), at the encoder's size,
    normalised as the released models (``rcdm``) or as the encoder's own (``native``)."""
    if choice == "rcdm":
        return RCDM
    return Preprocessing(
        f"{native.name}-square", size=native.size, resize="adm", resize_to=None,
        interpolation="bicubic", mean=native.mean, std=native.std,
    )


def _resolved(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


class Trainer(RunState, Previews):
    """One training run. Everything that can fail on user input (the options, the data
    folder, the encoder, the run folder, the checkpoint to resume) fails in the
    constructor, before any slow work.

    On resume the run's global batch is kept: the per-process batch is the saved global
    batch divided by the current number of processes, which must divide it."""

    def __init__(
        self,
        config: TrainConfig,
        device: torch.device,
        *,
        resume: bool = False,
        reporter: Reporter | None = None,
        overwrite: bool = False,
    ):
        config.validate()
        self.world = dist_util.from_environment()
        self.reporter = reporter
        # stored resolved, so that `--resume RUN` works from any working directory
        self.config = config = dataclasses.replace(
            config, data=_resolved(config.data), out=_resolved(config.out), weights=_resolved(config.weights)
        )
        self.resume = resume
        self.signals = StopSignals()
        self.notes: list[str] = []
        self.step = 0
        self._last_logged: tuple[float | None, int] = (None, 0)  # (mean loss, steps) of the last metrics record
        self.samples_seen = 0  # the data position: global batches consumed x global batch
        self.failed: set[int] = set()  # indices of images that failed to decode in training
        self.device = device
        check_precision(config.precision, self.device, training=True)
        warn_if_emulated(config.precision, self.device)
        self.run_dir = RunDir(config.out)
        if resume:
            if self.run_dir.latest() is None:
                raise UsageError(f"{config.out} has no complete checkpoint to resume from")
            self._resume_from = self.run_dir.resumable(warn=log.warning)
            if self._resume_from is None:
                raise RcdmError(f"{config.out} has no readable checkpoint to resume from (every one is damaged)")
        else:
            self.run_dir.check_fresh(overwrite)
        if config.weights and not Path(config.weights).is_file():
            raise UsageError(f"no such weights file: {config.weights}")

        # Everything below that can fail on user input fails before training starts.
        self.paths, self.unreadable = scan_images(Path(config.data))
        resolved = resolve_encoder(config.encoder, config.layer)
        self.layer = resolved.layer
        self.preprocessing = encoder_preprocessing(config.preprocessing, resolved.native_preprocessing)
        self.resolved_encoder = dataclasses.replace(resolved, preprocessing=self.preprocessing)
        self.unet_config, self.diffusion_config = config.architecture(resolved.dim)
        self.diffusion = GaussianDiffusion.from_config(self.diffusion_config)
        self.views = Views(self.unet_config.image_size, self.preprocessing.size, config.random_crop, config.random_flip)
        self.encoder_info = EncoderInfo(
            name=resolved.canonical,
            layer=self.layer,
            rep_dim=self.unet_config.rep_dim,
            weights=resolved.source.name if resolved.source is not None else None,
            preprocessing=self.preprocessing.to_dict(),
            weights_sha256=file_sha256(config.weights) if config.weights else None,
        )
        # warm start: the parent is checked against the architecture now, loaded in _build
        self.parent: Parent | None = None
        self.parent_record: dict | None = None
        if resume:
            self.parent_record = self.run_dir.read_config().get("parent")
        elif config.init:
            self.parent = resolve_parent(config.init, self.unet_config, self.diffusion_config)
        check_offline([  # the encoder's weights and the parent, missing offline, in one error
            None if config.weights else resolved.download(),
            released_download(config.init) if self.parent is not None else None,
        ])
        if resume:
            self._check_resumable()
        # joined last: every check above needs no other process, and fails alone
        self.device = dist_util.setup(self.world, device)

    @property
    def reporter(self) -> Reporter:
        return self._reporter

    @reporter.setter
    def reporter(self, reporter: Reporter | None) -> None:
        """Only rank 0 reports: W copies of every line say nothing more."""
        self._reporter = reporter if reporter is not None and self.world.is_main else Reporter()

    # --- setup ------------------------------------------------------------------------

    def _stop_point(self) -> None:
        """Stop (jointly) if a signal arrived during setup."""
        if dist_util.any_true(self.signals.requested is not None, self.world, self.device):
            raise Stopped()

    def _build(self) -> None:
        cfg = self.config
        self.reporter.event(f"loading encoder {cfg.encoder}/{self.layer}")
        weights = Path(cfg.weights).expanduser() if cfg.weights else None
        self.encoder: Encoder = dataclasses.replace(self.resolved_encoder, weights_path=weights).build(self.device)
        # what the checkpoints record is what was built
        self.encoder_info = dataclasses.replace(self.encoder_info, name=self.encoder.name, weights=self.encoder.weights_id)
        self._stop_point()
        self.features = None
        if cfg.cache_features:
            self.reporter.event(f"computing or loading the feature cache for {len(self.paths)} images")
            self.features, where, hit = load_or_compute(
                self.paths, self.encoder, self.layer, self.views, world=self.world, workers=cfg.workers,
                progress=lambda done, total: self.reporter.progress("encoding images for the feature cache", done, total),
                should_stop=lambda: self.signals.requested is not None,
            )
            self.reporter.event(f"feature cache {'found' if hit else 'written'}: {where}")

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(cfg.seed, 0))
            self.model = UNet(self.unet_config, activation_checkpointing=cfg.activation_checkpointing)
        self.model.to(self.device, memory_format=memory_format(cfg.channels_last))
        if self.parent is not None:
            self._start_from_parent()
        self.conditioning_names = conditioning_path(self.model, cfg.conditioning_layers)
        self._frozen: bool | None = None  # whether only the conditioning path trains now
        self.ema = EMA(self.model, cfg.ema)
        # The fused kernel updates every parameter in one pass; on the CPU too it cut
        # the tiny preset's AdamW step from 25 ms to 6.5 ms (docs/performance.md).
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.timesteps = create_timestep_sampler(cfg.schedule_sampler, self.diffusion.num_timesteps)
        if self.resume:
            self._restore()
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        self.network = self._compiled() if cfg.compile else self.ddp

    def _start_from_parent(self) -> None:
        parent = self.parent
        self.reporter.event(f"starting from {parent.spec} ({parent.checkpoint.meta.describe()})")
        reinitialised = load_parent(self.model, parent)
        if reinitialised:
            theirs, ours = parent.checkpoint.meta.rep_dim, self.unet_config.rep_dim
            why = (
                f"the parent was conditioned on {theirs}-d representations and this run on {ours}-d"
                if theirs != ours else "the parent has no null representation"
            )
            self.reporter.event(f"{why}: {', '.join(reinitialised)} start(s) afresh")
        self.parent_record = parent.record()

    def _set_phase(self) -> bool:
        """Whether this step trains the conditioning path only (--conditioning-only);
        in one process the frozen layers also skip their weight gradients. Under DDP
        every parameter keeps its gradient hook (DDP expects them all) and the frozen
        ones' gradients are dropped before the optimizer step instead."""
        frozen = self.step < self.config.conditioning_only
        if frozen != self._frozen:
            if self._frozen is not None or frozen:
                count = sum(p.numel() for n, p in self.model.named_parameters() if n in set(self.conditioning_names))
                self.reporter.event(
                    f"training only the conditioning path ({self.config.conditioning_layers}: {count:,} parameters) "
                    f"until step {self.config.conditioning_only}" if frozen
                    else f"step {self.step}: training every layer from now on"
                )
            if not self.world.distributed:
                set_trainable(self.model, self.conditioning_names if frozen else None)
            self._frozen = frozen
        return frozen

    def _dropped(self, positions: list[int]) -> torch.Tensor:
        """Which samples see the null representation this step, each drawn from its
        own stream (seed, step, position), like the noise."""
        draws = [
            torch.rand(1, generator=torch.Generator().manual_seed(stream_seed(self.config.seed, COND_DROP, self.step, pos)))
            for pos in positions
        ]
        return (torch.cat(draws) < self.config.cond_drop).to(self.device)

    def _compiled(self) -> CompiledOrEager:
        """The compiled network, tried once forward and backward on a batch of zeros so
        that a compilation failure falls back to eager here, not in the middle of a step."""
        cfg = self.config
        self.reporter.event("compiling the network (the first step takes a while)")
        network = CompiledOrEager(self.ddp, dynamic=False)
        if not network.active:
            return network
        n, size = cfg.microbatch or cfg.batch_size, self.unet_config.image_size
        x = torch.zeros(n, self.unet_config.in_channels, size, size, device=self.device)
        t = torch.zeros(n, dtype=torch.long, device=self.device)
        rep = torch.zeros(n, self.unet_config.rep_dim, device=self.device)
        sync = self.ddp.no_sync() if self.world.distributed else contextlib.nullcontext()
        try:
            with sync:
                with autocast(self.device, cfg.precision):
                    out = network(self._layout(x), t, rep)
                out.float().sum().backward()
        except Exception as exc:  # noqa: BLE001 - a failed backward compilation
            network.give_up(exc)
        self.optimizer.zero_grad(set_to_none=True)
        return network

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    # --- one step -----------------------------------------------------------------------

    def _noise_and_timesteps(self, global_positions: list[int], shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample timestep, importance weight and noise, each drawn from the
        sample's own stream (seed, step, position in the global batch)."""
        weights = torch.from_numpy(self.timesteps.weights())
        p = weights / weights.sum()
        ts, noises = [], []
        for pos in global_positions:
            gen = torch.Generator().manual_seed(stream_seed(self.config.seed, NOISE, self.step, pos))
            ts.append(torch.multinomial(p, 1, generator=gen))
            noises.append(torch.randn(shape, generator=gen))
        t = torch.cat(ts)
        w = (1.0 / (len(p) * p[t])).float()
        return t.to(self.device), w.to(self.device), torch.stack(noises).to(self.device)

    def _train_step(self, targets: torch.Tensor, conditioning: torch.Tensor, offset: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        targets = targets.to(self.device, non_blocking=True)
        if self.features is None:
            # float32, as the cache and sampling compute it: the representation a
            # training image gets does not depend on --precision or --cache-features
            with torch.no_grad():
                reps = self.encoder(conditioning.to(self.device, non_blocking=True), self.layer).float()
        else:
            reps = conditioning.to(self.device).float()
        n = targets.shape[0]
        positions = [offset + i for i in range(n)]
        t, weights, noise = self._noise_and_timesteps(positions, targets.shape[1:])
        dropped = self._dropped(positions) if cfg.cond_drop else None
        frozen = self._set_phase()
        # dropout's masks cover a whole (micro)batch, so they are keyed by process and
        # step, not by sample: see the module's docstring
        torch.manual_seed(stream_seed(cfg.seed, DROPOUT, self.step, self.world.rank))
        micro = cfg.microbatch or n
        totals = {"loss": 0.0, "mse": 0.0, "vb": 0.0}
        all_losses = []
        chunks = list(range(0, n, micro))
        for k, start in enumerate(chunks):
            sl = slice(start, start + micro)
            last = k == len(chunks) - 1
            sync = contextlib.nullcontext() if last or not self.world.distributed else self.ddp.no_sync()
            with sync:
                rep_chunk = reps[sl] if dropped is None else self.model.drop_representations(reps[sl], dropped[sl])
                with autocast(self.device, cfg.precision):
                    terms = self.diffusion.training_losses(
                        lambda x, tt: self.network(self._layout(x), tt, rep_chunk), targets[sl], t[sl], noise=noise[sl]
                    )
                loss = (terms["loss"] * weights[sl]).mean() * (terms["loss"].shape[0] / n)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            for key in totals:
                if key in terms:
                    totals[key] += float(terms[key].detach().float().sum())
            all_losses.append(terms["loss"].detach().float())
        if self.timesteps.name != "uniform":
            gathered_t = dist_util.all_gather_cat(t, self.world)
            gathered_l = dist_util.all_gather_cat(torch.cat(all_losses), self.world)
            self.timesteps.update(gathered_t.cpu(), gathered_l.cpu())
        if frozen:
            drop_frozen_gradients(self.model, self.conditioning_names)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
        stats = torch.tensor([totals["loss"] / n, totals["mse"] / n, totals["vb"] / n, float(grad_norm)], device=self.device)
        stats = dist_util.all_mean(stats, self.world)
        bad = not torch.isfinite(stats[0]) or (self.scaler is None and not torch.isfinite(stats[3]))
        if dist_util.any_true(bool(bad), self.world, self.device):
            raise self._non_finite("loss", self.step + 1)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model, self.step if cfg.ema_warmup else None)
        return {"loss": stats[0], "mse": stats[1], "vb": stats[2], "grad_norm": stats[3]}

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> TrainSummary:
        started = time.perf_counter()
        stream = None
        with self.signals:
            try:
                for note in self.notes:
                    self.reporter.event(note)
                self._choose_previews()
                self._build()
                self._stop_point()
                self._encode_previews()
                self._start_folder()
                stream = start_loader(self._loader())
                stopped = self._loop(stream)
                return self._summary(started, stopped=stopped, before_training=False)
            except Stopped:
                self.reporter.event(
                    f"{self.signals.requested or 'a stop signal'} received before training started: stopping, with nothing new to save"
                )
                return self._summary(started, stopped=True, before_training=True)
            finally:
                stream = None  # ends the data-loading processes
                dist_util.teardown(self.world)

    def _loader(self) -> torch.utils.data.DataLoader:
        cfg = self.config
        dataset = TrainingImages(self.paths, self.views, cfg.seed, self.features)
        batches = StepBatches(len(self.paths), cfg.batch_size, self.world.size, self.world.rank, cfg.seed, start=self.samples_seen)
        self.reporter.event(
            f"training {count_parameters(self.model) / 1e6:.1f} M parameters on {len(self.paths)} images "
            f"({len(self.unreadable)} unreadable left out), global batch {batches.global_batch}"
        )
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=cfg.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.workers > 0,
            worker_init_fn=ignore_stop_signals if cfg.workers > 0 else None,
        )

    def _loop(self, stream) -> bool:
        """Train until --steps or a stop signal; whether a signal stopped it."""
        cfg = self.config
        global_batch = cfg.batch_size * self.world.size
        offset = self.world.rank * cfg.batch_size
        self._window = self._new_window()
        empty_in_a_row = 0
        while self.step < cfg.steps:
            targets, conditioning, failed, empty = next(stream)
            new = [i for i in failed if i not in self.failed]
            found, any_empty = dist_util.share_faults(new, empty > 0, self.world, self.device)
            self.failed.update(found)
            self.samples_seen += global_batch  # the data position moves on, trained or not
            trained = not any_empty
            if trained:
                empty_in_a_row = 0
                self._record(self._train_step(targets, conditioning, offset), global_batch)
            else:
                empty_in_a_row += 1
                if empty_in_a_row >= MAX_EMPTY_BATCHES:
                    raise RcdmError(
                        f"{MAX_EMPTY_BATCHES} batches in a row held images that could not be decoded, even after trying "
                        f"{REPLACEMENT_TRIES} other files for each ({len(self.failed)} distinct files failed so far); "
                        f"check the files under {cfg.data}"
                    )
            if dist_util.any_true(self.signals.requested is not None, self.world, self.device):
                self.reporter.event(f"{self.signals.requested or 'a stop signal'} received: saving step {self.step} and stopping")
                self._save()
                return True
            if trained and (self.step % cfg.save_every == 0 or self.step == cfg.steps):
                self._save()
            if trained and self.world.is_main and self.step % cfg.sample_every == 0:
                self._preview()
        return False

    @staticmethod
    def _new_window() -> dict[str, float]:
        return {"loss": 0.0, "mse": 0.0, "vb": 0.0, "grad_norm": 0.0, "n": 0, "images": 0, "start": time.perf_counter()}

    def _record(self, stats: dict[str, torch.Tensor], global_batch: int) -> None:
        """Count a step; report it, and log the window's means every --log-every steps."""
        cfg, window = self.config, self._window
        self.step += 1
        window["images"] += global_batch
        for key in ("loss", "mse", "vb", "grad_norm"):
            window[key] += float(stats[key])
        window["n"] += 1
        rate = window["images"] / max(time.perf_counter() - window["start"], 1e-9)
        self.reporter.step(self.step, cfg.steps, window["loss"] / window["n"], rate)
        if self.step % cfg.log_every and self.step != cfg.steps:
            return
        record = {
            "step": self.step,
            **{key: window[key] / window["n"] for key in ("loss", "mse", "vb", "grad_norm")},
            "window_steps": window["n"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "img_per_s": rate,
            "samples_seen": self.samples_seen,
            "unreadable_at_scan": len(self.unreadable),
            "unreadable_in_training": len(self.failed),
        }
        if self.world.is_main:
            self.run_dir.append_metrics(record)
        self.reporter.log(record)
        self._last_logged = (record["loss"], record["window_steps"])
        self._window = self._new_window()

    def _summary(self, started: float, *, stopped: bool, before_training: bool) -> TrainSummary:
        latest = self.run_dir.latest()
        window = getattr(self, "_window", None)
        if window is not None and window["n"]:  # steps since the last log: a stop signal cut the window
            final_loss, final_steps = window["loss"] / window["n"], int(window["n"])
        else:
            final_loss, final_steps = self._last_logged
        return TrainSummary(
            run_dir=str(self.run_dir.root),
            step=self.step,
            stopped_by_signal=stopped,
            stopped_before_training=before_training,
            unreadable_at_scan=len(self.unreadable),
            unreadable_in_training=len(self.failed),
            last_checkpoint=str(latest[1]) if latest else None,
            seconds=time.perf_counter() - started,
            final_loss=final_loss,
            final_loss_steps=final_steps,
        )
