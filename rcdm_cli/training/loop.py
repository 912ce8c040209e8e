"""The training loop.

Reproducibility: every random draw is a function of the seed and of *where* it is used
(the step, the sample's position in the global batch, the image and epoch for
augmentation), never of the process count or of the data-loader workers. A run under
torchrun with W processes of batch b therefore takes the same steps as one process of
batch W*b, and a resumed run continues exactly where the saved one stopped: the RNG
state is implied by the step, which the checkpoint stores with the optimizer, the EMA
weights, the loss-aware sampler's history and the data position.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from rcdm_cli import __version__
from rcdm_cli.checkpoint.hashing import file_sha256
from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.rundir import RunDir
from rcdm_cli.checkpoint.store import load_checkpoint
from rcdm_cli.diffusion.config import get_preset
from rcdm_cli.diffusion.gaussian import GaussianDiffusion
from rcdm_cli.diffusion.timestep_samplers import create_timestep_sampler
from rcdm_cli.diffusion.unet import UNet, count_parameters
from rcdm_cli.encoders import Encoder, get_registry
from rcdm_cli.encoders.registry import resolve_preprocessing
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.fileio import write_json
from rcdm_cli.imaging import make_grid, save_png, to_pil
from rcdm_cli.pipeline.model import CompiledOrEager, RCDMModel, autocast, emulated_bf16, memory_format
from rcdm_cli.pipeline.sampling import SamplingOptions, sample_representations, stream_seed
from rcdm_cli.preprocessing import RCDM, Preprocessing
from rcdm_cli.training import distributed as dist_util
from rcdm_cli.training.config import TrainConfig
from rcdm_cli.training.data import StepBatches, TrainingImages, Views, collate, make_views, scan_images
from rcdm_cli.training.ema import EMA
from rcdm_cli.training.features import load_or_compute

log = logging.getLogger("rcdm.train")

NOISE = 3  # stream tag for timesteps and noise (data.py uses 1 and 2)
DROPOUT = 4


class Reporter:
    """What the loop tells its caller; the CLI renders it. All methods are optional."""

    def event(self, message: str) -> None: ...

    def step(self, step: int, total: int, loss: float, images_per_second: float) -> None: ...

    def log(self, record: dict[str, Any]) -> None: ...


@dataclass
class TrainSummary:
    run_dir: str
    step: int
    stopped_by_signal: bool
    skipped_images: int
    unreadable_at_scan: int
    last_checkpoint: str | None
    seconds: float


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


class _StopSignals:
    """SIGTERM and SIGUSR1 (what batch schedulers send before preemption) ask the loop
    to save and exit; the handlers are restored afterwards."""

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is None:
                continue
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be handled here
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, config: TrainConfig, device: torch.device, *, resume: bool = False, reporter: Reporter | None = None):
        config.validate()
        self.config = config
        self.resume = resume
        self.reporter = reporter or Reporter()
        self.world = dist_util.from_environment()
        self.device = dist_util.setup(self.world, device)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise UsageError("--precision fp16 needs a CUDA device; use bf16 on this machine")
        if config.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("this GPU has no bfloat16 support; use --precision fp16 (autocast with loss scaling)")
        if config.precision == "bf16" and emulated_bf16(self.device):
            log.warning("this CPU has no native bfloat16: --precision bf16 will be much slower than fp32")
        self.run_dir = RunDir(config.out)
        if not resume and self.run_dir.complete_checkpoints():
            raise UsageError(f"{config.out} already holds a training run; continue it with --resume {config.out}")

        # Everything below that can fail on user input fails before training starts.
        self.paths, self.unreadable = scan_images(Path(config.data))
        registry = get_registry()
        layers, native = registry.layers(config.encoder)
        entry, parsed = registry.get(config.encoder)
        self.layer = config.layer or entry.spec.default_layer
        if self.layer not in layers:
            raise UsageError(f"encoder {config.encoder!r} has no layer {self.layer!r}; it has: {', '.join(layers)}")
        source = entry.spec.weight_source(parsed.variant)
        if source is not None and source.preprocessing is not None:
            native = source.preprocessing
        self.preprocessing = encoder_preprocessing(config.preprocessing, native)
        preset = get_preset(config.preset)
        self.unet_config = preset.unet.with_rep_dim(layers[self.layer][0])
        self.diffusion_config = preset.diffusion
        self.diffusion = GaussianDiffusion.from_config(self.diffusion_config)
        self.views = Views(self.unet_config.image_size, self.preprocessing.size, config.random_crop, config.random_flip)
        if resume and self.run_dir.latest() is None:
            raise UsageError(f"{config.out} has no complete checkpoint to resume from")

    # --- setup ------------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.config
        self.reporter.event(f"loading encoder {cfg.encoder}/{self.layer}")
        self.encoder: Encoder = get_registry().create(
            cfg.encoder, weights_path=cfg.weights, preprocessing=self.preprocessing, device=self.device
        )
        self.features = None
        if cfg.cache_features:
            if self.world.is_main:
                self.reporter.event(f"computing or loading the feature cache for {len(self.paths)} images")
                self.features, where, hit = load_or_compute(self.paths, self.encoder, self.layer, self.views)
                self.reporter.event(f"feature cache {'found' if hit else 'written'}: {where}")
            dist_util.barrier(self.world)
            if not self.world.is_main:
                self.features, _, _ = load_or_compute(self.paths, self.encoder, self.layer, self.views)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(cfg.seed, 0))
            self.model = UNet(self.unet_config, activation_checkpointing=cfg.activation_checkpointing)
        self.model.to(self.device, memory_format=memory_format(cfg.channels_last))
        self.ema = EMA(self.model, cfg.ema)
        # The fused kernel updates every parameter in one pass; on the CPU too it cut
        # the tiny preset's AdamW step from 25 ms to 6.5 ms (docs/performance.md).
        fused = self.device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.timesteps = create_timestep_sampler(cfg.schedule_sampler, self.diffusion.num_timesteps)
        self.step = 0
        self.samples_seen = 0
        if self.resume:
            self._restore()
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        self.network = self._compiled() if cfg.compile else self.ddp

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

    def _restore(self) -> None:
        step, step_dir = self.run_dir.latest()
        meta, _ = load_checkpoint(step_dir / "model.safetensors", weights="model")
        if meta.unet != self.unet_config:
            raise RcdmError(f"{step_dir} was saved with a different architecture than this configuration")
        _, weights = load_checkpoint(step_dir / "model.safetensors", weights="model", device=self.device)
        self.model.load_state_dict(weights, strict=True)
        sets = {name: load_checkpoint(step_dir / "model.safetensors", weights=name)[1] for name in meta.weight_sets if name != "model"}
        try:
            self.ema.load(sets)
        except KeyError as exc:
            raise RcdmError(f"{step_dir} has no EMA weights {exc.args[0]}; resume with the run's --ema rates") from None
        state = self.run_dir.load_state(step_dir)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.timesteps.load_state_dict(state.get("timestep_sampler", {}))
        self.step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        self.skipped = int(state.get("skipped_images", 0))
        if self.world.is_main:
            self.run_dir.remove_stale_temporaries()
            self.run_dir.truncate_metrics(self.step)
        self.reporter.event(f"resuming {self.config.out} at step {self.step}")

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
            with torch.no_grad(), autocast(self.device, cfg.precision):
                reps = self.encoder(conditioning.to(self.device, non_blocking=True), self.layer).float()
        else:
            reps = conditioning.to(self.device).float()
        n = targets.shape[0]
        positions = [offset + i for i in range(n)]
        t, weights, noise = self._noise_and_timesteps(positions, targets.shape[1:])
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
                rep_chunk = reps[sl]
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
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))
        stats = torch.tensor([totals["loss"] / n, totals["mse"] / n, totals["vb"] / n, float(grad_norm)], device=self.device)
        stats = dist_util.all_mean(stats, self.world)
        bad = not torch.isfinite(stats[0]) or (self.scaler is None and not torch.isfinite(stats[3]))
        if dist_util.any_true(bool(bad), self.world, self.device):
            raise _NonFinite()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        return {"loss": stats[0], "mse": stats[1], "vb": stats[2], "grad_norm": stats[3]}

    # --- saving and previews ------------------------------------------------------------------

    def _meta(self) -> CheckpointMeta:
        enc = self.encoder
        sets = ("model", *self.ema.state().keys())
        return CheckpointMeta(
            unet=self.unet_config,
            diffusion=self.diffusion_config,
            encoder=EncoderInfo(
                name=enc.name,
                layer=self.layer,
                rep_dim=self.unet_config.rep_dim,
                weights=enc.weights_id,
                preprocessing=self.preprocessing.to_dict(),
                weights_sha256=file_sha256(self.config.weights) if self.config.weights else None,
            ),
            step=self.step,
            source={"kind": "trained", "run": str(Path(self.config.out).resolve()), "data": self.config.data},
            weight_sets=sets,
            default_weights=sets[1],
        )

    def _fingerprints(self) -> list[float]:
        """One number per process summarising its weights: DDP keeps the processes'
        copies identical, and a divergence (a bug, a faulty device) must not go unseen."""
        with torch.no_grad():
            local = torch.stack([p.double().sum() * (i % 7 + 1) for i, p in enumerate(self.model.parameters())]).sum()
        gathered = dist_util.all_gather_cat(local.reshape(1).to(self.device), self.world)
        values = [float(v) for v in gathered.cpu()]
        if any(v != values[0] for v in values):
            raise RcdmError(f"the processes' weights diverged at step {self.step} (fingerprints {values})")
        return values

    def _save(self) -> Path | None:
        path = None
        fingerprints = self._fingerprints()
        if self.world.is_main:
            state = {
                "step": self.step,
                "samples_seen": self.samples_seen,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "timestep_sampler": self.timesteps.state_dict(),
                "skipped_images": self.skipped,
                "world_size": self.world.size,
                "weight_fingerprints": fingerprints,
                "rcdm_version": __version__,
            }
            weights = {"model": self.model.state_dict(), **self.ema.state()}
            path = self.run_dir.save(self.step, weights, self._meta(), state, keep=self.config.keep)
            self.reporter.event(f"saved {path}")
        dist_util.barrier(self.world)
        return path

    def _prepare_previews(self) -> None:
        cfg = self.config
        chosen = self.paths[: cfg.preview_images]
        self.preview_inputs, views = [], []
        for p in chosen:
            with Image.open(p) as im:
                target, enc_view = make_views(im, self.views, None, False)
            self.preview_inputs.append(to_pil(target))
            views.append(enc_view)
        with torch.no_grad():
            self.preview_reps = self.encoder(torch.stack(views).to(self.device), self.layer).float().cpu()

    def _preview(self) -> Path:
        cfg = self.config
        rate = self.ema.rates[0]
        with torch.device("meta"):
            unet = UNet(self.unet_config)
        unet.load_state_dict(self.ema.shadows[rate], assign=True)
        unet.eval().requires_grad_(False)
        model = RCDMModel(unet, self._meta(), self.device)
        options = SamplingOptions(sampler="ddim", steps=cfg.preview_steps, seed=cfg.seed, batch_size=max(1, cfg.batch_size))
        samples = sample_representations(model, self.preview_reps, cfg.preview_samples, options).samples
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

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> TrainSummary:
        cfg = self.config
        started = time.perf_counter()
        self.skipped = 0
        self._build()
        if self.world.is_main:
            self.run_dir.root.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir.config_path, {"config": cfg.to_dict(), "rcdm_version": __version__, "world_size": self.world.size,
                                                 "images": len(self.paths), "unreadable_images": [str(p) for p in self.unreadable],
                                                 "unet": self.unet_config.to_dict(), "diffusion": self.diffusion_config.to_dict(),
                                                 "parameters": count_parameters(self.model),
                                                 "encoder_preprocessing": self.preprocessing.to_dict()})
            self._prepare_previews()
        self.reporter.event(
            f"training {count_parameters(self.model) / 1e6:.1f} M parameters on {len(self.paths)} images "
            f"({len(self.unreadable)} unreadable skipped), global batch {cfg.batch_size * self.world.size}"
        )
        dataset = TrainingImages(self.paths, self.views, cfg.seed, self.features)
        batches = StepBatches(len(self.paths), cfg.batch_size, self.world.size, self.world.rank, cfg.seed, start=self.samples_seen)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=cfg.workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=cfg.workers > 0,
        )
        stream = iter(loader)
        window = {"loss": 0.0, "mse": 0.0, "vb": 0.0, "grad_norm": 0.0, "n": 0}
        window_images, window_start = 0, time.perf_counter()
        last_good: tuple[torch.Tensor, torch.Tensor] | None = None
        last_checkpoint = None
        stopped = False
        global_batch = cfg.batch_size * self.world.size
        with _StopSignals() as signals:
            try:
                while self.step < cfg.steps:
                    targets, conditioning, _, skipped = next(stream)
                    skipped_here = torch.tensor([float(skipped)], device=self.device)
                    if self.world.distributed:
                        torch.distributed.all_reduce(skipped_here)
                    self.skipped += int(skipped_here.item())
                    if targets is None:  # every image of this slice was unreadable
                        if last_good is None:
                            continue
                        targets, conditioning = last_good
                    last_good = (targets, conditioning)
                    offset = self.world.rank * cfg.batch_size
                    try:
                        stats = self._train_step(targets, conditioning, offset)
                    except _NonFinite:
                        previous = self.run_dir.latest()
                        kept = f"; the last good checkpoint is {previous[1]}" if previous else "; no checkpoint was saved yet"
                        raise RcdmError(
                            f"the loss became NaN or infinite at step {self.step + 1}; training stopped{kept} "
                            "(try a lower --lr, or --precision fp32)"
                        ) from None
                    self.step += 1
                    self.samples_seen += global_batch
                    window_images += global_batch
                    for key in ("loss", "mse", "vb", "grad_norm"):
                        window[key] += float(stats[key])
                    window["n"] += 1
                    elapsed = time.perf_counter() - window_start
                    self.reporter.step(self.step, cfg.steps, float(stats["loss"]), window_images / max(elapsed, 1e-9))
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        record = {
                            "step": self.step,
                            "loss": window["loss"] / window["n"],
                            "mse": window["mse"] / window["n"],
                            "vb": window["vb"] / window["n"],
                            "grad_norm": window["grad_norm"] / window["n"],
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "img_per_s": window_images / max(elapsed, 1e-9),
                            "samples_seen": self.samples_seen,
                            "skipped_images": self.skipped,
                        }
                        if self.world.is_main:
                            self.run_dir.append_metrics(record)
                        self.reporter.log(record)
                        window = {"loss": 0.0, "mse": 0.0, "vb": 0.0, "grad_norm": 0.0, "n": 0}
                        window_images, window_start = 0, time.perf_counter()
                    if dist_util.any_true(signals.requested is not None, self.world, self.device):
                        self.reporter.event(f"{signals.requested or 'a stop signal'} received: saving step {self.step} and stopping")
                        last_checkpoint = self._save()
                        stopped = True
                        break
                    if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                        last_checkpoint = self._save()
                    if self.world.is_main and self.step % cfg.sample_every == 0:
                        self._preview()
            finally:
                del stream
                dist_util.teardown(self.world)
        latest = self.run_dir.latest()
        return TrainSummary(
            run_dir=str(self.run_dir.root),
            step=self.step,
            stopped_by_signal=stopped,
            skipped_images=self.skipped,
            unreadable_at_scan=len(self.unreadable),
            last_checkpoint=str(latest[1]) if latest else (str(last_checkpoint) if last_checkpoint else None),
            seconds=time.perf_counter() - started,
        )


class _NonFinite(Exception):
    pass
