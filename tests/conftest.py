"""Shared fixtures: the reference vectors, tiny models, and a clean environment. The
plain helpers that tests import are in helpers.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import REPO, make_tiny_state


def _reference_dir() -> Path:
    env = os.environ.get("RCDM_REFERENCE_DIR")
    return Path(env) if env else REPO.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (numbers from the original implementation). CI sets
    RCDM_REQUIRE_REFERENCE=1 so that a missing directory fails instead of skipping."""
    path = _reference_dir()
    if not path.is_dir():
        if os.environ.get("RCDM_REQUIRE_REFERENCE") == "1":
            pytest.fail(f"reference vectors not found at {path}")
        pytest.skip(f"reference vectors not found at {path}")
    return path


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """A folder for one test module's large files (synthetic published checkpoints
    run to hundreds of MB each), removed when the module is done, so that the suite
    never holds more than one module's files on a small disk."""
    path = tmp_path_factory.mktemp("module")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty RCDM_HOME, so nothing touches the user's cache;
    it is removed after the test (a released checkpoint's synthetic copy is 1.7 GB)."""
    home = tmp_path_factory.mktemp("rcdm_home")
    monkeypatch.setenv("RCDM_HOME", str(home))
    monkeypatch.delenv("RCDM_DEVICE", raising=False)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (training steps, small
    networks): a second thread gains little there, and on a shared 2-core machine a
    spinning second thread slowed such steps several-fold. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An rcdm checkpoint of the `tiny` preset on 8-d representations, no encoder."""
    from rcdm_cli.checkpoint.metadata import CheckpointMeta
    from rcdm_cli.checkpoint.store import save_checkpoint
    from rcdm_cli.diffusion import PRESETS

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    meta = CheckpointMeta(
        unet=PRESETS["tiny"].unet.with_rep_dim(8), diffusion=PRESETS["tiny"].diffusion, source={"kind": "test"}
    )
    save_checkpoint(path, {"model": make_tiny_state(8)}, meta)
    return path
