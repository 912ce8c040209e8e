"""The encoder plugin host, the supervised/random/timm encoders, and a third-party
plugin installed for real (a dist-info with entry_points.txt on sys.path)."""

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rcdm_cli.cli.app import run
from rcdm_cli.encoders import (
    EncoderName,
    EncoderRegistry,
    EncoderSpec,
    WeightSource,
    create_encoder,
    get_registry,
    hookimpl,
    reset_registry,
)
from rcdm_cli.encoders.weights import encoder_cache_dir, fetch_weights
from rcdm_cli.errors import RcdmError, UsageError
from synthetic import resnet50_state

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_registry()
    yield
    reset_registry()


def _image(path: Path, size=(300, 200), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_built_in_encoders_come_through_entry_points():
    registry = get_registry()
    assert {"supervised", "random", "timm"} <= set(registry.specs)
    assert registry.specs["supervised"].plugin.startswith("rcdm ")
    assert registry.failed == {}


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("dino", EncoderName("dino")),
        ("supervised@v2", EncoderName("supervised", "v2")),
        ("timm:convnext_tiny.fb_in1k", EncoderName("timm", None, "convnext_tiny.fb_in1k")),
    ],
)
def test_encoder_names(text, parsed):
    assert EncoderName.parse(text) == parsed
    assert str(parsed) == text


@pytest.mark.parametrize(
    "name, message",
    [
        ("nosuch", "unknown encoder 'nosuch'; available:"),
        ("supervised@v9", "no published weights 'v9'; it has: v1, v2"),
        ("timm", "family of encoders: name one as timm:MODEL"),
        ("random:3", "takes no ':' argument"),
        ("supervised@", "malformed encoder name"),
        ("timm:not_a_model_xyz", "timm has no model"),
    ],
)
def test_bad_encoder_names(name, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        get_registry().layers(name)


class _PluginA:
    @staticmethod
    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(name="twin", description="a", build=lambda r: None, layers={"backbone": (4, "x")}))


class _PluginB:
    @staticmethod
    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(name="twin", description="b", build=lambda r: None, layers={"backbone": (4, "x")}))


def test_two_plugins_registering_one_name_is_an_error_naming_both():
    registry = EncoderRegistry(load_entry_points=False)
    registry.add_plugin(_PluginA, origin="pkg-a 1.0")
    registry.add_plugin(_PluginB, origin="pkg-b 2.0")
    with pytest.raises(RcdmError, match="'twin' is registered twice: by pkg-a 1.0 and by pkg-b 2.0"):
        registry.specs


def test_invalid_registrations_are_refused():
    class Bad:
        @staticmethod
        @hookimpl
        def register_encoders(register):
            register(EncoderSpec(name="Bad Name", description="", build=lambda r: None, layers={"backbone": (1, "")}))

    registry = EncoderRegistry(load_entry_points=False)
    registry.add_plugin(Bad, origin="bad 0")
    with pytest.raises(RcdmError, match="invalid encoder name 'Bad Name'"):
        registry.specs


def test_supervised_loads_the_torchvision_layout_strictly(tmp_path):
    path = tmp_path / "resnet50-0676ba61.pth"
    state = resnet50_state(with_fc=True)
    torch.save(state, path)
    enc = create_encoder("supervised", weights_path=path)
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    for layer, dim in (("backbone", 2048), ("layer3", 1024), ("logits", 1000)):
        assert enc(x, layer).shape == (2, dim)
    enc(x, "logits").sum().backward()
    assert x.grad.abs().sum() > 0
    # against torchvision's own ResNet-50 with the same file
    import torchvision

    reference = torchvision.models.resnet50()
    reference.load_state_dict(state)
    reference.eval()
    with torch.no_grad():
        expected = reference(enc.preprocessing.normalize(x.detach()))
        got = enc(x.detach(), "logits")
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5

    broken = dict(state)
    broken["fc.weights"] = broken.pop("fc.weight")
    torch.save(broken, tmp_path / "renamed.pth")
    with pytest.raises(RcdmError, match=r"missing keys \(heads.logits.weight\).*unexpected keys \(heads.logits.weights\)"):
        create_encoder("supervised", weights_path=tmp_path / "renamed.pth")
    broken = dict(state)
    broken["layer2.0.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    torch.save(broken, tmp_path / "shape.pth")
    with pytest.raises(RcdmError, match=r"trunk.layer2.0.conv2.weight is \[128, 128, 1, 1\], expected \[128, 128, 3, 3\]"):
        create_encoder("supervised", weights_path=tmp_path / "shape.pth")


def test_supervised_v2_has_its_own_preprocessing():
    registry = get_registry()
    spec = registry.specs["supervised"].spec
    assert spec.weight_source("v2").preprocessing.resize_to == 232
    assert spec.weight_source(None).name == "v1"


def test_random_encoder_is_seeded_and_frozen():
    a, b = create_encoder("random"), create_encoder("random")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training and not a.network.training


def test_timm_family_with_local_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False)
    save_file(source.state_dict(), str(tmp_path / "resnet18.safetensors"))
    enc = create_encoder("timm:resnet18", weights_path=tmp_path / "resnet18.safetensors")
    assert enc.layers == {"backbone": (512, "pooled features (timm num_classes=0)")}
    x = torch.rand(1, 3, 224, 224)
    source.reset_classifier(0)
    source.eval()
    with torch.no_grad():
        assert torch.allclose(enc(x), source(enc.preprocessing.normalize(x)), atol=1e-5)


def test_timm_family_offline_error_points_to_weights(monkeypatch):
    monkeypatch.setenv("RCDM_OFFLINE", "1")
    with pytest.raises(RcdmError, match="--weights"):
        create_encoder("timm:resnet18")


def test_weight_cache_follows_torch_hub_unless_rcdm_home_is_set(monkeypatch, tmp_path, _isolated_home):
    assert encoder_cache_dir() == Path(_isolated_home) / "encoders"
    monkeypatch.delenv("RCDM_HOME")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert encoder_cache_dir() == tmp_path / "torch" / "hub" / "checkpoints"


def test_offline_download_error_names_url_and_destination(monkeypatch):
    monkeypatch.setenv("RCDM_OFFLINE", "1")
    with pytest.raises(RcdmError) as info:
        create_encoder("supervised")
    message = str(info.value)
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert str(encoder_cache_dir() / "resnet50-0676ba61.pth") in message


def test_a_file_already_in_the_cache_is_used(tmp_path):
    state = resnet50_state(with_fc=True)
    dest = encoder_cache_dir() / "resnet50-0676ba61.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    source = get_registry().specs["supervised"].spec.weight_source(None)
    assert fetch_weights(source) == dest
    enc = create_encoder("supervised")
    assert enc.weights_file == str(dest) and enc.weights_id == "v1"


def test_missing_weights_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such weights file"):
        create_encoder("supervised", weights_path=tmp_path / "nope.pth")


def test_encoders_command_lists_everything(capsys):
    assert run(["encoders", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {e["name"]: e for e in listing["encoders"]}
    sup = by_name["supervised"]
    assert sup["layers"]["logits"]["dim"] == 1000
    assert sup["input_size"] == 224 and sup["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert [w["name"] for w in sup["weights"]] == ["v1", "v2"] and sup["weights"][0]["default"]
    assert sup["weights"][0]["license"] and sup["plugin"].startswith("rcdm ")
    assert "timm:MODEL" in by_name
    assert run(["encoders"]) == 0
    assert "supervised" in capsys.readouterr().out


def test_encode_command_writes_one_row_per_image(capsys, tmp_path):
    imgs = [_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "reps.safetensors"
    code = run(["encode", str(tmp_path), "--encoder", "random", "--layer", "layer3", "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["count"] == 3 and summary["dim"] == 1024 and summary["images"] == [str(p) for p in imgs]
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        reps = f.get_tensor("reps")
        meta = json.loads(f.metadata()["rcdm"])
    assert reps.shape == (3, 1024) and meta["layer"] == "layer3"
    direct = create_encoder("random").encode([Image.open(p) for p in imgs], "layer3")
    assert torch.allclose(reps, direct, atol=1e-5)
    assert run(["encode", str(tmp_path / "0.png"), "--encoder", "random", "--layer", "head", "-o", str(tmp_path / "x.npy")]) == 2
    assert "has no layer 'head'" in capsys.readouterr().err


def test_encode_corrupt_image_is_one_error_line(capsys, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    code = run(["encode", str(bad), "--encoder", "random", "-o", str(tmp_path / "r.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("rcdm: error: cannot read image") and not (tmp_path / "r.npy").exists()


def _doc_blocks() -> dict[str, str]:
    """The code blocks of docs/plugins.md, by language."""
    text = DOCS.read_text()
    return {lang: textwrap.dedent(body) for lang, body in re.findall(r"```(toml|python)\n(.*?)```", text, re.S)}


def test_the_documented_third_party_plugin_installs_and_works(tmp_path, monkeypatch, capsys):
    """Install docs/plugins.md's plugin as a distribution on sys.path (a dist-info
    with entry_points.txt: what pip would write) and use it end to end."""
    blocks = _doc_blocks()
    site = tmp_path / "site"
    dist_info = site / "rcdm_tinyconv-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: rcdm-tinyconv\nVersion: 0.1\n")
    entry = re.search(r"\[project\.entry-points\.rcdm\]\n(.+)", blocks["toml"]).group(1).replace("\"", "")
    (dist_info / "entry_points.txt").write_text(f"[rcdm]\n{entry}\n")
    (site / "rcdm_tinyconv.py").write_text(blocks["python"])
    monkeypatch.syspath_prepend(str(site))
    reset_registry()

    assert run(["encoders", "--json"]) == 0
    listing = {e["name"]: e for e in json.loads(capsys.readouterr().out)["encoders"]}
    tiny = listing["tinyconv"]
    assert tiny["plugin"] == "rcdm-tinyconv 0.1"
    assert tiny["layers"]["head"]["dim"] == 8 and tiny["input_size"] == 64

    _image(tmp_path / "a.png")
    out = tmp_path / "reps.npy"
    assert run(["encode", str(tmp_path / "a.png"), "--encoder", "tinyconv", "--layer", "head", "-o", str(out)]) == 0
    assert np.load(out).shape == (1, 8)

    # its published-weights path: a file in the plugin's own layout, loaded strictly
    module = sys.modules["rcdm_tinyconv"]
    torch.save(module.TinyConv().state_dict(), tmp_path / "tiny.pt")
    enc = create_encoder("tinyconv", weights_path=tmp_path / "tiny.pt")
    assert enc(torch.rand(2, 3, 64, 64), "backbone").shape == (2, 32)
    sys.modules.pop("rcdm_tinyconv", None)


def test_a_broken_plugin_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    dist_info = site / "broken_plugin-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[rcdm]\nbroken = broken_plugin_mod\n")
    (site / "broken_plugin_mod.py").write_text("raise ImportError('needs a library that is not installed')\n")
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    assert run(["encoders", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "supervised" in {e["name"] for e in listing["encoders"]}
    (name, problem), = listing["failed_plugins"].items()
    assert "broken-plugin 1.0" in name and "needs a library" in problem
