"""The run directory and its checkpoints.

```
RUN_DIR/
  config.json                 everything needed to reproduce (and resume) the run
  metrics.jsonl               one line per logged step
  previews/step-0000500.png   samples of fixed conditioning images
  checkpoints/
    step-0000500/
      model.safetensors       weights (model + one set per EMA rate) and metadata:
                              an rcdm checkpoint usable by every command
      state.pt                optimizer, loss scaler, timestep sampler, data position
    latest                    the name of the newest complete checkpoint
```

A checkpoint directory is written under a temporary name and renamed into place
only when both files are complete; the previous checkpoint is deleted only after
that, so a crash (or SIGKILL, or a full disk) at any moment leaves at least one
complete checkpoint and never a half-written one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.checkpoint.store import read_meta, save_checkpoint
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.fileio import make_temp_dir, probe_writable, write_bytes
from rcdm_cli.folderlock import holds_only_lock
from rcdm_cli.tensorfile import pickle_refusal

_STEP_DIR = re.compile(r"^step-(\d{7,})$")


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    def exists(self) -> bool:
        return self.config_path.is_file()

    @staticmethod
    def is_run_dir(path: str | Path) -> bool:
        return (Path(path) / "config.json").is_file() and (Path(path) / "checkpoints").is_dir()

    def holds_run_config(self) -> bool:
        """Whether config.json is a training run's (and not some other program's)."""
        try:
            data = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and isinstance(data.get("config"), dict) and "rcdm_version" in data

    def check_fresh(self, overwrite: bool) -> None:
        """Refuse, before any work, to start a new run where its files would mix with
        others: a folder holding a run with checkpoints (that is resumed, not restarted),
        or any other non-empty folder. A run folder stopped before its first save may be
        started again; ``overwrite`` allows the rest (see ``reset``)."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise UsageError(f"{root} is a file; give --out a folder")
        probe_writable(root)
        if not root.is_dir() or holds_only_lock(root) or overwrite:
            return
        if self.complete_checkpoints():
            raise UsageError(
                f"{root} already holds a training run; continue it with --resume {root}, or pass --overwrite to start it afresh"
            )
        if not self.holds_run_config():
            raise UsageError(f"{root} is not empty and holds no training run; choose a new or empty --out, or pass --overwrite")

    def reset(self) -> None:
        """Remove what an earlier run wrote here (checkpoints, metrics, previews), so
        that a fresh run's curve and checkpoints are its own. Only names of the run
        layout are touched; other files in the folder stay."""
        if self.checkpoints.is_dir():
            for d in self.checkpoints.iterdir():
                if _STEP_DIR.match(d.name) or d.name.startswith(".tmp-"):
                    shutil.rmtree(d, ignore_errors=True)
            (self.checkpoints / "latest").unlink(missing_ok=True)
        self.metrics_path.unlink(missing_ok=True)
        if self.previews.is_dir():
            for f in self.previews.glob("step-*.png"):
                f.unlink(missing_ok=True)

    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise UsageError(f"{self.root} is not a training run (no config.json)") from None
        except json.JSONDecodeError as exc:
            raise RcdmError(f"{self.config_path} is corrupt: {exc}") from None

    def step_dir(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:07d}"

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, directory) of every complete checkpoint, oldest first. Temporary
        directories left by an interrupted save are not checkpoints."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for d in self.checkpoints.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and d.is_dir() and (d / "model.safetensors").is_file() and (d / "state.pt").is_file():
                found.append((int(m.group(1)), d))
        return sorted(found)

    def latest(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint (the ``latest`` pointer, checked, or a scan)."""
        pointer = self.checkpoints / "latest"
        complete = self.complete_checkpoints()
        if pointer.is_file():
            name = pointer.read_text().strip()
            for step, d in complete:
                if d.name == name:
                    # the pointer is written after the rename, so a newer directory
                    # can exist only if the process died in between: prefer it
                    return complete[-1] if complete[-1][0] > step else (step, d)
        return complete[-1] if complete else None

    def resumable(self, warn: Callable[[str], None]) -> tuple[int, Path] | None:
        """The newest checkpoint whose files can be read: one cut short (a full disk, an
        interrupted copy) is named in a warning and the one before it is tried, as if
        the damaged one had never been written."""
        newest = self.latest()
        if newest is None:
            return None
        for step, d in reversed([c for c in self.complete_checkpoints() if c[0] <= newest[0]]):
            damage = _damage(d)
            if damage is None:
                return step, d
            warn(f"checkpoint {d} is damaged ({damage}); resuming from the one before it")
        return None

    def latest_model(self) -> Path:
        found = self.latest()
        if found is None:
            raise UsageError(f"training run {self.root} has no complete checkpoint yet")
        return found[1] / "model.safetensors"

    def remove_stale_temporaries(self) -> None:
        if self.checkpoints.is_dir():
            for d in self.checkpoints.glob(".tmp-*"):
                shutil.rmtree(d, ignore_errors=True)

    def save(
        self,
        step: int,
        weights: dict[str, dict[str, torch.Tensor]],
        meta: CheckpointMeta,
        state: dict[str, Any],
        keep: int = 2,
    ) -> Path:
        """Write a complete checkpoint for ``step``, then drop all but the newest ``keep``."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        final = self.step_dir(step)
        tmp = make_temp_dir(f".tmp-{final.name}-", self.checkpoints)
        try:
            save_checkpoint(tmp / "model.safetensors", weights, meta)
            _save_state(state, tmp / "state.pt")
            if final.exists():  # saving the same step twice (e.g. a signal right after a save)
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                previous = self.latest()
                kept = f"; the previous checkpoint ({previous[1]}) is intact" if previous else ""
                raise RcdmError(f"could not save the checkpoint of step {step}: {exc.strerror or exc}{kept}") from None
            if isinstance(exc, RcdmError):
                previous = self.latest()
                kept = f"; the previous checkpoint ({previous[1]}) is intact" if previous else ""
                raise RcdmError(f"{exc}{kept}") from None
            raise
        write_bytes(self.checkpoints / "latest", (final.name + "\n").encode())
        for old_step, d in self.complete_checkpoints()[:-keep] if keep > 0 else []:
            if old_step != step:
                shutil.rmtree(d, ignore_errors=True)
        return final

    def load_state(self, step_dir: Path) -> dict[str, Any]:
        try:
            return torch.load(step_dir / "state.pt", map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
            refused = pickle_refusal(step_dir / "state.pt", exc)
            if refused is not None:
                raise refused from None
            raise RcdmError(f"{step_dir / 'state.pt'} is unreadable: {str(exc).splitlines()[0] if str(exc) else exc}") from None

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def truncate_metrics(self, after_step: int) -> None:
        """Drop lines logged after ``after_step`` (by a run that died before saving
        them), so a resumed run's curve continues without duplicates."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= after_step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        write_bytes(self.metrics_path, ("\n".join(kept) + "\n" if kept else "").encode())


def _save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save, whose failure to write (a full disk) surfaces as a RuntimeError with
    a message about stream positions: turned into the OSError it is, with the free
    space that explains it."""
    try:
        torch.save(state, path)
    except RuntimeError as exc:
        free = shutil.disk_usage(path.parent).free
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(
            errno.ENOSPC if free < 64 * 2**20 else errno.EIO,
            f"writing {path.name} failed with {free / 2**20:.0f} MiB free on its disk ({detail})",
        ) from None


def _damage(step_dir: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, found cheaply (headers and zip
    directories, not the tensors), or None."""
    try:
        read_meta(step_dir / "model.safetensors")
    except RcdmError as exc:
        return str(exc)
    if not zipfile.is_zipfile(step_dir / "state.pt"):
        return f"{step_dir / 'state.pt'} is truncated or corrupt"
    return None
