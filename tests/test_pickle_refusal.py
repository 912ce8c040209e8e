"""A torch file whose pickle could run code is refused with one message wherever it is
read (vectors, noise, a run's state, encoder weights, official checkpoints), and the
message never suggests the unsafe ``weights_only=False``."""

import collections

import pytest
import torch

from rcdm_cli.checkpoint.rundir import RunDir
from rcdm_cli.cli.app import run
from rcdm_cli.errors import RcdmError
from rcdm_cli.tensorfile import load_tensor, pickle_refusal


class Payload:
    """Any class is code that unpickling would import and call."""

    def __init__(self):
        self.value = torch.zeros(3)


def _unsafe(path):
    torch.save({"reps": torch.zeros(2, 8), "extra": Payload()}, path)
    return path


def test_vectors_and_noise_files_are_refused_in_one_message(tmp_path, capsys):
    path = _unsafe(tmp_path / "reps.pt")
    with pytest.raises(RcdmError) as info:
        load_tensor(path, preferred=("reps",))
    message = str(info.value)
    assert message.startswith(f"refused to load {path}: it pickles ") and "Payload" in message
    assert "could run code" in message and "weights_only" not in message
    for option in ("--rep", "--noise"):
        args = ["sample", "-c", "init:tiny", "-o", str(tmp_path / "s")]
        args += ["--rep", str(path)] if option == "--rep" else ["--rep", "random:1", "--noise", str(path)]
        assert run(args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"rcdm: error: refused to load {path}") and "weights_only" not in err[-1]


def test_a_run_state_with_code_in_it_is_refused_the_same_way(tmp_path):
    step = tmp_path / "run" / "checkpoints" / "step-1"
    step.mkdir(parents=True)
    torch.save({"step": 1, "rng": collections.OrderedDict(x=Payload())}, step / "state.pt")
    with pytest.raises(RcdmError, match=r"refused to load .*state\.pt: it pickles .*Payload.*could run code") as info:
        RunDir(tmp_path / "run").load_state(step)
    assert "weights_only" not in str(info.value)


def test_a_damaged_file_is_not_called_unsafe():
    assert pickle_refusal("x.pt", EOFError("Ran out of input")) is None
