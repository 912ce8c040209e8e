"""One run per output folder: a second run beside a live one refuses in one line
naming the holder, and a holder that dies (even by SIGKILL) leaves nothing stuck."""

import subprocess
import sys
import time

import pytest
from PIL import Image

from rcdm_cli.cli.app import run
from rcdm_cli.folderlock import LOCK_NAME

HOLD = "import sys, time; from rcdm_cli.folderlock import claim; claim(sys.argv[1], 'sample'); print('held', flush=True); time.sleep(60)"


@pytest.fixture
def holder():
    """Start a process that claims a folder and keeps it; yields a function that does so."""
    started = []

    def hold(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        started.append(proc)
        return proc

    yield hold
    for proc in started:
        proc.kill()
        proc.wait()


def _last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_second_sample_run_into_a_held_folder_refuses_and_a_killed_holder_frees_it(capsys, tmp_path, holder):
    out = tmp_path / "samples"
    proc = holder(out)
    assert run(["sample", "--rep", "random:1", "-c", "init:tiny", "-o", str(out)]) == 1
    line = _last_line(capsys)
    assert line.startswith(f"rcdm: error: {out} is in use by another rcdm run (rcdm sample, pid {proc.pid} on ")
    assert not (out / "manifest.json").exists()
    proc.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
    proc.wait()
    assert run(["sample", "--rep", "random:1", "-c", "init:tiny", "-o", str(out)]) == 0
    assert (out / "manifest.json").is_file()
    # the lock is free again once the command has returned
    assert run(["sample", "--rep", "random:1", "-c", "init:tiny", "-o", str(out), "--overwrite"]) == 0


def test_two_training_runs_cannot_share_a_new_folder(capsys, tmp_path, holder):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(data / f"{i}.png")
    out = tmp_path / "run"
    holder(out)
    args = ["train", str(data), "--encoder", "random", "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--workers", "0"]
    assert run([*args, "--out", str(out)]) == 1
    assert "is in use by another rcdm run" in _last_line(capsys)
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing of a second run was written


def test_a_run_that_fails_before_writing_leaves_no_folder_behind(capsys, tmp_path, monkeypatch):
    import rcdm_cli.pipeline.sampling as sampling
    from rcdm_cli.errors import RcdmError

    def failing(name):
        def sampler(*args, **kwargs):
            raise RcdmError("the sampler failed")

        return sampler

    monkeypatch.setattr(sampling, "get_sampler", failing)
    out = tmp_path / "never"
    assert run(["sample", "--rep", "random:1", "-c", "init:tiny", "-o", str(out)]) == 1
    assert "the sampler failed" in _last_line(capsys)
    assert not out.exists()  # claimed (created) for the run, removed again with nothing in it
