import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import make_tiny_state, rel_err
from rcdm_cli.checkpoint.convert import convert_official
from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.official import check_state_dict, load_official_state_dict
from rcdm_cli.checkpoint.released import RELEASED, RELEASED_FLAGS, get_released
from rcdm_cli.checkpoint.resolve import resolve_checkpoint
from rcdm_cli.checkpoint.store import load_checkpoint, read_meta, save_checkpoint
from rcdm_cli.checkpoint.flags import parse_official_flags
from rcdm_cli.diffusion import PRESETS
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.pipeline.model import RCDMModel

TINY = PRESETS["tiny"]


def _meta(rep_dim=8, **kw):
    return CheckpointMeta(unet=TINY.unet.with_rep_dim(rep_dim), diffusion=TINY.diffusion, **kw)


def test_round_trip_of_weights_and_metadata(tmp_path):
    state = make_tiny_state(8)
    ema = {k: v + 1 for k, v in state.items()}
    enc = EncoderInfo(name="dino", layer="head", rep_dim=8, weights="resnet50")
    meta = _meta(encoder=enc, step=1234, weight_sets=("model", "ema-0.9999"), default_weights="ema-0.9999")
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"model": state, "ema-0.9999": ema}, meta)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left
    loaded_meta, weights = load_checkpoint(path)
    assert loaded_meta == meta
    assert all(torch.equal(weights[k], ema[k]) for k in state)
    _, online = load_checkpoint(path, weights="model")
    assert all(torch.equal(online[k], state[k]) for k in state)
    with pytest.raises(UsageError, match="no weight set 'ema-0.999'.*model, ema-0.9999"):
        load_checkpoint(path, weights="ema-0.999")


def test_metadata_is_readable_from_the_header_alone(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"model": make_tiny_state(8)}, _meta(step=7))
    assert read_meta(path).step == 7


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, {"model": make_tiny_state(8)}, _meta())
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RcdmError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(UsageError, match="without rcdm metadata.*rcdm convert"):
        read_meta(foreign)
    with pytest.raises(UsageError, match="no such checkpoint"):
        read_meta(tmp_path / "missing.safetensors")


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = _meta().to_dict()
    meta["format_version"] = 99
    save_file({"model/x": torch.zeros(1)}, str(path), metadata={"rcdm": json.dumps(meta)})
    with pytest.raises(RcdmError, match="upgrade rcdm"):
        read_meta(path)


def test_official_loader_unwraps_common_layouts(tmp_path):
    state = make_tiny_state(8)
    for i, obj in enumerate([state, {"state_dict": state}, {f"module.{k}": v for k, v in state.items()}]):
        path = tmp_path / f"{i}.pt"
        torch.save(obj, path)
        loaded = load_official_state_dict(path)
        assert set(loaded) == set(state)


def test_truncated_official_file_is_refused(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(make_tiny_state(8), path)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(RcdmError, match="truncated or corrupt"):
        load_official_state_dict(cut)


class _RunsCode:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    state = make_tiny_state(8)
    state["payload"] = _RunsCode(str(marker))
    torch.save(state, path)
    with pytest.raises(RcdmError, match="refused to load .*could run code"):
        load_official_state_dict(path)
    assert not marker.exists()
    # the same file as a raw (non-zip) pickle
    raw = tmp_path / "evil-legacy.pt"
    with open(raw, "wb") as f:
        pickle.dump(state, f, protocol=2)
    with pytest.raises(RcdmError):
        load_official_state_dict(raw)
    assert not marker.exists()


def test_state_dict_check_names_what_does_not_fit():
    config = TINY.unet.with_rep_dim(8)
    state = make_tiny_state(8)
    check_state_dict(state, config)
    broken = dict(state)
    broken.pop("out.2.bias")
    broken["extra.weight"] = torch.zeros(1)
    broken["time_embed.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(RcdmError) as info:
        check_state_dict(broken, config, source="f.pt")
    message = str(info.value)
    assert "1 missing keys (out.2.bias)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "time_embed.0.weight is [3, 3], expected [128, 32]" in message
    with pytest.raises(RcdmError, match="trained on 8-d representations.*not 16-d"):
        check_state_dict(state, TINY.unet.with_rep_dim(16))


def _tiny_reference_official(reference_dir, tmp_path):
    meta = json.loads((reference_dir / "official-unet-tiny.json").read_text())
    tensors = load_file(str(reference_dir / "official-unet-tiny.safetensors"))
    state = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    path = tmp_path / "official.pt"
    torch.save(state, path)
    flags = " ".join(f"--{k} {v}" for k, v in meta["official_flags"].items() if k != "ssl_dim")
    return path, flags, tensors


def test_convert_round_trip_reproduces_the_original_outputs(reference_dir, tmp_path):
    path, flags, tensors = _tiny_reference_official(reference_dir, tmp_path)
    out = tmp_path / "tiny.safetensors"
    summary = convert_official(str(path), out, flags=flags)
    assert summary["tensors"] == 218
    ckpt = resolve_checkpoint(str(out))
    assert ckpt.meta.rep_dim == 64 and ckpt.meta.encoder is None
    assert ckpt.meta.source["sha256"]
    model = RCDMModel.from_checkpoint(ckpt)
    with torch.no_grad():
        output = model.unet(tensors["input.x"], tensors["input.t"], tensors["input.feat"])
    assert rel_err(output, tensors["expected.output"]) < 1e-5


def test_convert_records_encoder_from_options_or_flags(reference_dir, tmp_path):
    path, flags, _ = _tiny_reference_official(reference_dir, tmp_path)
    convert_official(str(path), tmp_path / "a.safetensors", flags=flags, encoder="myenc", layer="backbone")
    assert read_meta(tmp_path / "a.safetensors").encoder.name == "myenc"
    convert_official(str(path), tmp_path / "b.safetensors", flags=flags + " --type_model myenc --use_head True")
    enc = read_meta(tmp_path / "b.safetensors").encoder
    assert (enc.name, enc.layer, enc.rep_dim) == ("myenc", "head", 64)
    assert enc.preprocessing["size"] == 224 and enc.preprocessing["mean"] == [0.5] * 3
    assert enc.preprocessing["resize"] == "adm"


def test_convert_half_precision(reference_dir, tmp_path):
    path, flags, tensors = _tiny_reference_official(reference_dir, tmp_path)
    out = tmp_path / "half.safetensors"
    convert_official(str(path), out, flags=flags, dtype="float16")
    assert out.stat().st_size < path.stat().st_size * 0.6
    model = RCDMModel.from_checkpoint(resolve_checkpoint(str(out)))
    with torch.no_grad():
        output = model.unet(tensors["input.x"], tensors["input.t"], tensors["input.feat"])
    assert rel_err(output, tensors["expected.output"]) < 1e-2


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"rep_dim": 128}, UsageError, "trained on 64-d representations, not 128-d"),
        ({"encoder": "dino", "layer": "head"}, UsageError, "dino/head gives 256-d representations"),
        ({"encoder": "dino"}, UsageError, "go together"),
        ({"dtype": "int8"}, UsageError, "--dtype"),
    ],
)
def test_convert_refuses_mismatches(reference_dir, tmp_path, kwargs, error, message):
    path, flags, _ = _tiny_reference_official(reference_dir, tmp_path)
    with pytest.raises(error, match=message):
        convert_official(str(path), tmp_path / "x.safetensors", flags=flags, **kwargs)
    assert not (tmp_path / "x.safetensors").exists()


def _registry_dims(name):
    from rcdm_cli.checkpoint.convert import installed_layer_dims

    return installed_layer_dims(name)


@pytest.mark.parametrize(
    "encoder, layer, message",
    [
        ("dino", "trunk", "dino/backbone gives 2048-d representations"),  # trunk is the backbone
        ("dino", "stage9", "encoder 'dino' has no layer 'stage9'; it has: backbone"),
        ("nosuchencoder", "backbone", "unknown encoder 'nosuchencoder'"),
    ],
)
def test_convert_checks_encoder_and_layer_against_the_installed_encoders(reference_dir, tmp_path, encoder, layer, message):
    path, flags, _ = _tiny_reference_official(reference_dir, tmp_path)
    with pytest.raises(UsageError, match=message):
        convert_official(str(path), tmp_path / "x.safetensors", flags=flags, encoder=encoder, layer=layer, layer_dims=_registry_dims)
    assert not (tmp_path / "x.safetensors").exists()


def test_converted_ema_files_are_labelled_ema_and_rcdm_files_are_recognised(reference_dir, tmp_path):
    path, flags, _ = _tiny_reference_official(reference_dir, tmp_path)
    ema = path.with_name("rcdm_ema_tiny.pt")
    path.rename(ema)
    out = tmp_path / "tiny.safetensors"
    convert_official(str(ema), out, flags=flags)
    meta = read_meta(out)
    assert meta.weight_sets == ("ema",) and meta.default_weights == "ema"
    with pytest.raises(UsageError, match="already an rcdm checkpoint"):
        convert_official(str(out), tmp_path / "again.safetensors", flags=flags)


def test_convert_without_flags_assumes_rcdm_128_and_says_so(reference_dir, tmp_path):
    path, _, _ = _tiny_reference_official(reference_dir, tmp_path)
    with pytest.raises(RcdmError, match="does not fit.*give the flags it was trained with"):
        convert_official(str(path), tmp_path / "x.safetensors")


def test_released_table_matches_the_paper():
    assert len(RELEASED) == 9
    assert get_released("dino-head").url == "https://dl.fbaipublicfiles.com/rcdm/rcdm_ema_dino_head.pt"
    assert get_released("dino-trunk") is get_released("dino-backbone")
    assert {c.rep_dim for c in RELEASED.values()} == {2048, 256, 128, 8192}
    parsed = parse_official_flags(RELEASED_FLAGS, rep_dim=256)
    assert get_released("dino-head").meta().unet == parsed.unet
    with pytest.raises(UsageError, match="unknown released checkpoint 'dino-neck'"):
        get_released("dino-neck")


def test_released_offline_error_names_url_and_path(monkeypatch, _isolated_home):
    monkeypatch.setenv("RCDM_OFFLINE", "1")
    with pytest.raises(RcdmError) as info:
        resolve_checkpoint("released:vicreg-head").load()
    message = str(info.value)
    assert "https://dl.fbaipublicfiles.com/rcdm/rcdm_ema_vicreg_head.pt" in message
    assert str(Path(_isolated_home) / "checkpoints" / "rcdm_ema_vicreg_head.pt") in message


def test_init_spec_builds_a_random_model_of_the_preset():
    ckpt = resolve_checkpoint("init:tiny", rep_dim=12)
    assert ckpt.state is None and ckpt.meta.rep_dim == 12 and ckpt.meta.image_size == 32
    a = RCDMModel.from_checkpoint(ckpt, init_seed=0).unet.state_dict()
    b = RCDMModel.from_checkpoint(ckpt, init_seed=0).unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UsageError, match="unknown preset"):
        resolve_checkpoint("init:huge")


def test_official_file_passed_as_checkpoint_points_to_convert(tmp_path):
    path = tmp_path / "rcdm_ema_dino_head.pt"
    torch.save(make_tiny_state(8), path)
    with pytest.raises(UsageError, match="rcdm convert"):
        resolve_checkpoint(str(path))
