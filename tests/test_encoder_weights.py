"""Reading weight files (safetensors, torch, numpy pickles), telling a damaged file
from a refused one, and checking cached downloads once."""

from __future__ import annotations

import collections
import json
import os
import pickle
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import rcdm_cli.download_cache as download_module
from rcdm_cli.download_cache import sha256sum
from rcdm_cli.encoders.numpy_pickle import NumpyUnpickler
from rcdm_cli.encoders.weights import encoder_cache_dir, fetch_weights, is_safetensors
from rcdm_cli.errors import RcdmError
from rcdm_cli.plugin import WeightSource, load_numpy_pickle, load_torch_file

# --- safetensors and torch files ---------------------------------------------------------


def test_safetensors_is_recognised_by_content_whatever_the_name(tmp_path):
    state = {"a": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(5)}
    for name in ("w.safetensors", "w.pth", "w"):
        save_file(state, str(tmp_path / name))
        assert is_safetensors(tmp_path / name)
        loaded = load_torch_file(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save(state, tmp_path / "t.pth")
    assert not is_safetensors(tmp_path / "t.pth")
    assert torch.equal(load_torch_file(tmp_path / "t.pth")["a"], state["a"])


def _corrupt_files(tmp_path: Path) -> dict[str, Path]:
    torch.save({"w": torch.zeros(1000)}, tmp_path / "zip.pth")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file({"w": torch.zeros(1000)}, str(tmp_path / "st.safetensors"))
    files = {
        "random": os.urandom(4096),
        "text": b"this is a text file, not weights\n" * 40,
        "empty": b"",
        "truncated-zip": (tmp_path / "zip.pth").read_bytes()[:600],
        "truncated-legacy": (tmp_path / "legacy.pth").read_bytes()[:-1000],
        "truncated-safetensors": (tmp_path / "st.safetensors").read_bytes()[:-1000],
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.pth"
        out[name].write_bytes(data)
    return out


@pytest.mark.parametrize(
    "kind", ["random", "text", "empty", "truncated-zip", "truncated-legacy", "truncated-safetensors"]
)
def test_a_damaged_file_is_reported_as_corrupt_not_refused(tmp_path, kind):
    path = _corrupt_files(tmp_path)[kind]
    with pytest.raises(RcdmError) as info:
        load_torch_file(path)
    message = str(info.value)
    assert message.startswith(f"{path} is truncated or corrupt (") and "refused" not in message
    assert "check the file, or get it again" in message and "\n" not in message


def test_a_damaged_cached_download_says_to_delete_it(tmp_path):
    dest = encoder_cache_dir() / "dino_resnet50_pretrain_full_checkpoint.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(os.urandom(4096))
    with pytest.raises(RcdmError) as info:
        load_torch_file(dest)
    assert f"it is a cached download: delete {dest} and run again to download it afresh" in str(info.value)


class _NotData:
    pass


class _Reduces:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return subprocess.call, (["sh", "-c", f"touch {shlex.quote(self.marker)}"],)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_disallowed_global_is_a_refusal_naming_it(tmp_path, legacy):
    marker = tmp_path / "ran"
    for name, obj, named in (
        ("class.pth", {"a": _NotData()}, f"{__name__}._NotData"),
        ("code.pth", {"a": _RunsCode(marker)}, "call"),
        ("blocked.pth", {"a": _Reduces(os.system, (f"touch {marker}",))}, "system"),  # a module torch blocks
    ):
        torch.save(obj, tmp_path / name, _use_new_zipfile_serialization=not legacy)
        with pytest.raises(RcdmError) as info:
            load_torch_file(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"refused to load {tmp_path / name}: it pickles ")
        assert "not plain data" in message and "corrupt" not in message and f"{named}, an object" in message
    assert not marker.exists()


# --- numpy pickles --------------------------------------------------------------------------


def _plain_tree():
    return {
        "params": {"conv": {"w": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b": np.zeros(0, np.float32)}},
        "step": np.int64(7),
        "shape": (3, [np.float16(1.5), "text", 2.0, None, True]),
        "ordered": collections.OrderedDict(a=np.ones(2, np.uint8)),
        "tags": {"a", "b"},
    }


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return type(b) is type(a) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(b) is type(a) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (np.ndarray, np.generic)):
        return np.asarray(b).dtype == np.asarray(a).dtype and np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_of_arrays_and_plain_containers_load(tmp_path, protocol):
    """Protocol 2 (what ``dill.dump(protocol=2)`` writes) stores array bytes through
    ``_codecs.encode``; the newer protocols store them directly."""
    path = tmp_path / "tree.pkl"
    with open(path, "wb") as f:
        pickle.dump(_plain_tree(), f, protocol=protocol)
    if protocol == 2:
        assert b"_codecs\nencode" in path.read_bytes()
    assert _same(_plain_tree(), load_numpy_pickle(path))


@pytest.mark.parametrize("kind", ["system", "eval", "class", "codec", "counter"])
def test_numpy_pickles_refuse_any_other_object_and_run_nothing(tmp_path, kind):
    marker = tmp_path / "ran"
    payload = {
        "system": _Reduces(os.system, (f"touch {marker}",)),
        "eval": _Reduces(eval, (f"open({str(marker)!r}, 'w')",)),
        "class": _NotData(),
        "codec": _Reduces(__import__("codecs").encode, ("abc", "rot13")),
        "counter": collections.Counter("abc"),
    }[kind]
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"w": np.ones(2), "x": payload}, f, protocol=2)
    with pytest.raises(RcdmError, match=f"^refused to load {path}: "):
        load_numpy_pickle(path)
    assert not marker.exists()


def test_numpy_pickle_extra_globals_admit_one_more_name(tmp_path):
    path = tmp_path / "c.pkl"
    with open(path, "wb") as f:
        pickle.dump(collections.Counter("aab"), f, protocol=2)
    with open(path, "rb") as f:
        loaded = NumpyUnpickler(f, {("collections", "Counter"): collections.Counter}).load()
    assert loaded == collections.Counter("aab")


def test_a_damaged_numpy_pickle_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "tree.pkl"
    with open(path, "wb") as f:
        pickle.dump(_plain_tree(), f, protocol=2)
    data = path.read_bytes()[:-20]
    path.write_bytes(data)
    with pytest.raises(RcdmError, match=f"^{path} is truncated or corrupt .*check the file"):
        load_numpy_pickle(path)
    cached = _cached("pretrain_res50x1.pkl", data)
    with pytest.raises(RcdmError, match=f"it is a cached download: delete {cached} and run again"):
        load_numpy_pickle(cached)


# --- checking cached downloads ----------------------------------------------------------------


def _cached(name: str, data: bytes) -> Path:
    dest = encoder_cache_dir() / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest


def _source(name: str, **digest) -> WeightSource:
    return WeightSource(name="w", url=f"https://example.org/{name}", license="MIT", **digest)


@pytest.mark.parametrize("kind", ["sha256", "sha256_prefix"])
def test_a_cached_file_is_verified_once_and_again_when_it_changes(monkeypatch, kind):
    dest = _cached("weights-a.pth", b"published bytes" * 100)
    digest = sha256sum(dest)
    source = _source("weights-a.pth", **{kind: digest if kind == "sha256" else digest[:8]})
    assert fetch_weights(source) == dest
    record = json.loads(dest.with_name("weights-a.pth.verified.json").read_text())
    assert record == {"url": source.url, "bytes": 1500, "mtime_ns": dest.stat().st_mtime_ns, "sha256": digest}

    hashed = []
    monkeypatch.setattr(download_module, "sha256sum", lambda p: hashed.append(p) or sha256sum(p))
    assert fetch_weights(source) == dest and hashed == []  # recorded: not hashed again

    dest.write_bytes(b"damaged bytes!!" * 100)  # same size, new contents and modification time
    os.utime(dest, ns=(dest.stat().st_atime_ns, record["mtime_ns"] + 10**9))
    with pytest.raises(RcdmError) as info:
        fetch_weights(source)
    message = str(info.value)
    assert hashed == [dest] and str(dest) in message and "delete it and run again" in message
    assert f"https://example.org/weights-a.pth by other means and put it at {dest}" in message


def test_every_source_states_its_check():
    assert "SHA-256 prefix 0676ba61" in _source("x", sha256_prefix="0676ba61").integrity
    assert "SHA-256 " + "ab" * 32 in _source("x", sha256="ab" * 32).integrity
    assert "Content-Length" in _source("x").integrity
    assert WeightSource(name="w", url="https://x/y", license="MIT", checked_by="by the hub").integrity == "by the hub"
