"""What a checkpoint of a training run holds: how it is written, checked and
restored. A resumed run continues exactly where the saved one stopped, because the
step (which implies every random draw), the optimizer, the EMA weights, the
loss-aware sampler's history and the data position are all saved together.

:class:`RunState` is a part of :class:`rcdm_cli.training.loop.Trainer`, kept apart
so that the loop reads without the bookkeeping; it uses the trainer's attributes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from rcdm_cli import __version__
from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.store import load_checkpoint, read_meta
from rcdm_cli.diffusion.unet import count_parameters
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.fileio import write_json
from rcdm_cli.training import distributed as dist_util


class RunState:
    """Saving, and resuming from, a run's checkpoints (a part of ``Trainer``)."""

    # --- resuming: what the checkpoint's metadata can refuse before any slow work -------------

    def _check_resumable(self) -> None:
        cfg = self.config
        step, step_dir = self._resume_from
        meta = read_meta(step_dir / "model.safetensors")
        if meta.unet != self.unet_config:
            raise RcdmError(f"{step_dir} was saved with a different architecture than this configuration")
        if meta.encoder is not None:
            differences = self._encoder_differences(meta.encoder)
            if differences:
                raise RcdmError(
                    f"{step_dir} was trained with another encoder input: {'; '.join(differences)}; "
                    "resume with the run's encoder, weights file and preprocessing"
                )
        if step > cfg.steps:
            raise UsageError(f"{cfg.out} is already at step {step}: --steps {cfg.steps} would end it earlier; give more steps, or leave --steps out")
        self.step = step
        self._keep_global_batch()

    def _encoder_differences(self, saved: EncoderInfo) -> list[str]:
        now = self.encoder_info
        labels = {"name": "encoder", "layer": "layer", "weights": "weights", "weights_sha256": "weights file (sha256)"}
        found = [
            f"{label} {getattr(saved, key)} (now {getattr(now, key)})"
            for key, label in labels.items()
            if getattr(saved, key) != getattr(now, key)
        ]
        if saved.preprocessing != now.preprocessing:
            found.append(f"preprocessing {saved.preprocessing.get('name')} (now {now.preprocessing.get('name')})")
        return found

    def _keep_global_batch(self) -> None:
        """The per-process batch of a resumed run, from its saved global batch: a
        different process count must not change what a step is."""
        cfg = self.config
        saved = self.run_dir.read_config()
        global_batch = int(saved.get("global_batch") or saved["config"]["batch_size"] * saved.get("world_size", 1))
        processes = self.world.size
        if global_batch % processes:
            raise UsageError(
                f"the run's global batch of {global_batch} images does not split evenly over {processes} processes; "
                f"resume it on a number of processes that divides {global_batch}"
            )
        per_process = global_batch // processes
        if cfg.microbatch and per_process % cfg.microbatch:
            raise UsageError(
                f"--microbatch {cfg.microbatch} does not divide the {per_process} images per process of this run "
                f"on {processes} process(es); pass a --microbatch that divides {per_process}"
            )
        if per_process != cfg.batch_size:
            self.config = dataclasses.replace(cfg, batch_size=per_process)
            self.notes.append(f"keeping the run's global batch of {global_batch}: {per_process} images on each of {processes} process(es)")
    # --- saving -------------------------------------------------------------------------------

    def _meta(self) -> CheckpointMeta:
        sets = ("model", *self.ema.state().keys())
        return CheckpointMeta(
            unet=self.unet_config,
            diffusion=self.diffusion_config,
            encoder=self.encoder_info,
            step=self.step,
            source={
                "kind": "trained", "run": self.config.out, "data": self.config.data,
                **({"parent": self.parent_record} if self.parent_record else {}),
            },
            weight_sets=sets,
            default_weights=sets[1],
        )

    def _fingerprints(self) -> list[float]:
        """One number per process summarising its weights: DDP keeps the processes'
        copies identical, and a divergence (a bug, a faulty device) must not go unseen.
        The sum is finite exactly when every weight is, so it also keeps NaN or
        infinite weights out of a checkpoint that would count as good."""
        with torch.no_grad():
            local = torch.stack([p.double().sum() * (i % 7 + 1) for i, p in enumerate(self.model.parameters())]).sum()
        gathered = dist_util.all_gather_cat(local.reshape(1).to(self.device), self.world)
        values = [float(v) for v in gathered.cpu()]
        if not all(math.isfinite(v) for v in values):
            raise self._non_finite("weights", self.step)
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
                "unreadable_in_training": sorted(str(self.paths[i]) for i in self.failed),
                "world_size": self.world.size,
                "weight_fingerprints": fingerprints,
                "rcdm_version": __version__,
            }
            weights = {"model": self.model.state_dict(), **self.ema.state()}
            path = self.run_dir.save(self.step, weights, self._meta(), state, keep=self.config.keep)
            self.reporter.event(f"saved {path}")
        dist_util.barrier(self.world)
        return path

    def _start_folder(self) -> None:
        """config.json, written by rank 0 once setup has succeeded; a fresh run first
        clears what an earlier attempt left (metrics, previews, checkpoints)."""
        cfg = self.config
        if not self.world.is_main:
            return
        if not self.resume:
            self.run_dir.reset()
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir.config_path, {
            "config": cfg.to_dict(), "rcdm_version": __version__, "world_size": self.world.size,
            "global_batch": cfg.batch_size * self.world.size,
            "images": len(self.paths), "unreadable_images": [str(p) for p in self.unreadable],
            "unet": self.unet_config.to_dict(), "diffusion": self.diffusion_config.to_dict(),
            "parameters": count_parameters(self.model), "encoder_preprocessing": self.preprocessing.to_dict(),
            "parent": self.parent_record,
        })

    def _non_finite(self, what: str, step: int) -> RcdmError:
        previous = self.run_dir.latest()
        kept = f"; the last good checkpoint is {previous[1]}" if previous else "; no checkpoint was saved yet"
        return RcdmError(
            f"the {what} became NaN or infinite at step {step}; training stopped{kept} (try a lower --lr, or --precision fp32)"
        )

    # --- restoring --------------------------------------------------------------------------

    def _restore(self) -> None:
        step, step_dir = self._resume_from
        meta, weights = load_checkpoint(step_dir / "model.safetensors", weights="model", device=self.device)
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
        index = {str(p): i for i, p in enumerate(self.paths)}
        self.failed = {index[name] for name in state.get("unreadable_in_training", []) if name in index}
        if self.world.is_main:
            self.run_dir.remove_stale_temporaries()
            self.run_dir.truncate_metrics(self.step)
        self.reporter.event(f"resuming {self.config.out} at step {self.step}")
