"""The library behind `rcdm encode`: a batch at a time with progress, and the file
with the record `rcdm sample --rep` checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.representations import check_output, encode_in_batches, write_representations
from rcdm_cli.tensorfile import load_tensor, provenance


def test_batches_in_order_with_progress():
    seen, calls = [], []

    def encode(batch):
        calls.append(list(batch))
        return torch.tensor([[float(x)] for x in batch])

    reps = encode_in_batches(encode, list(range(5)), 2, lambda done, total: seen.append((done, total)))
    assert reps.flatten().tolist() == [0, 1, 2, 3, 4]
    assert calls == [[0, 1], [2, 3], [4]] and seen == [(2, 5), (4, 5), (5, 5)]
    with pytest.raises(UsageError, match="--batch-size must be positive"):
        encode_in_batches(encode, [1], 0)


def test_the_file_and_its_record(tmp_path):
    reps = torch.randn(3, 4)
    info = {"encoder": "random", "layer": "layer3", "weights": None}
    write_representations(tmp_path / "r.safetensors", reps, info)
    assert torch.equal(load_tensor(tmp_path / "r.safetensors", preferred=("reps",)), reps)
    assert provenance(tmp_path / "r.safetensors")["layer"] == "layer3"
    write_representations(tmp_path / "r.npy", reps, info)
    assert np.array_equal(np.load(tmp_path / "r.npy"), reps.numpy())
    with pytest.raises(UsageError, match="must end in .safetensors or .npy"):
        check_output(tmp_path / "r.pt")
