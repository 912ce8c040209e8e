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

from helpers import REPO
from rcdm_cli.cli.app import run
from rcdm_cli.encoders import (
    EncoderName,
    EncoderRegistry,
    EncoderSpec,
    create_encoder,
    get_registry,
    hookimpl,
    reset_registry,
)
from rcdm_cli.encoders.weights import encoder_cache_dir, fetch_weights
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.plugin import WeightSource
from synthetic import resnet50_state

DOCS = REPO / "docs" / "plugins.md"


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
        get_registry().describe(name)


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


def test_invalid_registrations_are_refused_and_reported():
    class Bad:
        @staticmethod
        @hookimpl
        def register_encoders(register):
            register(EncoderSpec(name="Bad Name", description="", build=lambda r: None, layers={"backbone": (1, "")}))

    registry = EncoderRegistry(load_entry_points=False)
    registry.add_plugin(Bad, origin="bad 0")
    registry.add_plugin(_PluginA, origin="pkg-a 1.0")
    assert set(registry.specs) == {"twin"}
    assert "invalid encoder name 'Bad Name'" in registry.failed["bad 0"]


class _RaisingPlugin:
    @staticmethod
    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(name="half", description="", build=lambda r: None, layers={"backbone": (1, "x")}))
        {}["needs-a-setting"]


def test_a_plugin_whose_hook_raises_is_left_out_and_named():
    registry = EncoderRegistry(load_entry_points=False)
    registry.add_plugin(_RaisingPlugin, origin="pkg-raise 3.1", label="raiser (pkg-raise 3.1)")
    registry.add_plugin(_PluginA, origin="pkg-a 1.0")
    assert set(registry.specs) == {"twin"}  # none of the failing plugin's encoders, not even the one before the error
    assert registry.failed == {"raiser (pkg-raise 3.1)": "register_encoders raised KeyError: 'needs-a-setting'"}
    with pytest.raises(UsageError, match=r"unknown encoder 'half'.*1 plugin\(s\) failed to load: raiser \(pkg-raise 3.1\)"):
        registry.get("half")


def _install(site: Path, dist: str, version: str, module: str, source: str) -> None:
    """A distribution as pip would leave it: a dist-info with entry_points.txt, and its module."""
    dist_info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(f"[rcdm]\n{module} = {module}\n")
    (site / f"{module}.py").write_text(source)


def test_an_installed_plugin_whose_hook_raises_does_not_stop_the_cli(tmp_path, monkeypatch, capsys):
    source = textwrap.dedent(
        """
        from rcdm_cli.encoders import hookimpl

        @hookimpl
        def register_encoders(register):
            raise KeyError("weights_dir")
        """
    )
    _install(tmp_path / "site", "rcdm-raising", "2.0", "rcdm_raising_plugin", source)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    reset_registry()
    try:
        assert run(["encoders", "--json"]) == 0
        listing = json.loads(capsys.readouterr().out)
        assert "supervised" in {e["name"] for e in listing["encoders"]}
        assert listing["failed_plugins"] == {
            "rcdm_raising_plugin (rcdm-raising 2.0)": "register_encoders raised KeyError: 'weights_dir'"
        }
        assert run(["encoders"]) == 0
        err = capsys.readouterr().err
        assert "plugin rcdm_raising_plugin (rcdm-raising 2.0) failed to load" in err and "internal error" not in err
    finally:
        sys.modules.pop("rcdm_raising_plugin", None)


@pytest.mark.slow
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


def test_random_encoder_has_live_residual_branches():
    """The paper's baseline is a default-initialised ResNet-50: every block's last
    batch norm at scale 1 (timm's zero_init_last would make each branch output 0)."""
    enc = create_encoder("random")
    trunk = enc.network.trunk
    blocks = [block for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4) for block in stage]
    assert len(blocks) == 16
    assert all(torch.equal(block.bn3.weight, torch.ones_like(block.bn3.weight)) for block in blocks)
    assert all(torch.equal(block.bn3.bias, torch.zeros_like(block.bn3.bias)) for block in blocks)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = enc(x)
        # a block without a downsample: with a dead branch it would be the identity,
        # and changing its convolution would change nothing
        trunk.layer3[2].conv2.weight.mul_(3.0)
        after = enc(x)
    assert (after - before).abs().max() > 1e-3


def test_random_encoder_takes_no_weights_file(tmp_path):
    torch.save(resnet50_state(), tmp_path / "w.pth")
    with pytest.raises(UsageError, match="takes no weights file"):
        create_encoder("random", weights_path=tmp_path / "w.pth")


@pytest.mark.slow
def test_supervised_accepts_plain_prefixed_and_own_state_dicts(tmp_path):
    from safetensors.torch import save_file

    state = resnet50_state(with_fc=True)
    torch.save(state, tmp_path / "published.pth")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = create_encoder("supervised", weights_path=tmp_path / "published.pth")(x, "logits")
        own = create_encoder("supervised", weights_path=tmp_path / "published.pth").network.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "plain.safetensors"))
    save_file(own, str(tmp_path / "own.bin"))  # recognised by content, not by name
    torch.save({"epoch": 90, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    for name in ("plain.safetensors", "own.bin", "wrapped.pth"):
        with torch.no_grad():
            got = create_encoder("supervised", weights_path=tmp_path / name)(x, "logits")
        assert torch.equal(got, expected), name


@pytest.mark.parametrize(
    "content, holds",
    [(torch.zeros(3), "holds a Tensor"), ([torch.zeros(3)], "holds a list"), ({"epoch": 3, "arch": "r50"}, "arch (str), epoch (int)")],
    ids=["tensor", "list", "no-state-dict"],
)
def test_supervised_file_without_a_state_dict_is_one_error_line(tmp_path, capsys, content, holds):
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    _image(tmp_path / "a.png")
    code = run(["encode", str(tmp_path / "a.png"), "-e", "supervised", "--weights", str(path), "-o", str(tmp_path / "r.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "internal error" not in err[0]
    assert str(path) in err[0] and holds in err[0] and "torchvision's ResNet-50" in err[0]


def test_old_files_without_batch_norm_counters_load(tmp_path):
    """Files saved before PyTorch 0.4.1 have no num_batches_tracked; those keys (and
    only those) may be missing, and are then 0."""
    state = resnet50_state(with_fc=True)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(state) - len(old) == 53
    torch.save(old, tmp_path / "old.pth")
    enc = create_encoder("supervised", weights_path=tmp_path / "old.pth")
    counters = {k: v for k, v in enc.network.state_dict().items() if k.endswith("num_batches_tracked")}
    assert len(counters) == 53 and all(v.item() == 0 for v in counters.values())
    torch.save({k: v for k, v in old.items() if k != "bn1.running_mean"}, tmp_path / "older.pth")
    with pytest.raises(RcdmError, match=r"1 missing keys \(trunk\.bn1\.running_mean\)"):
        create_encoder("supervised", weights_path=tmp_path / "older.pth")


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


def test_encoders_describes_one_timm_model_from_its_pretrained_cfg(capsys):
    """Layers, input and weights of the named model (timm's pretrained_cfg is offline
    data: nothing is downloaded or allocated)."""
    assert run(["encoders", "timm:convnext_tiny.fb_in1k", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["encoders"]
    assert row["name"] == "timm:convnext_tiny.fb_in1k" and row["member_of"] == "timm" and not row["family"]
    assert row["layers"] == {"backbone": {"dim": 768, "description": "pooled features (timm num_classes=0)"}}
    pre = row["preprocessing"]
    assert (pre["size"], pre["resize_to"], pre["interpolation"]) == (224, 256, "bicubic")  # crop_pct 0.875
    assert (pre["mean"], pre["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    (weights,) = row["weights"]
    assert weights["url"] == "https://huggingface.co/timm/convnext_tiny.fb_in1k"
    assert weights["license"] == "apache-2.0" and "rcdm checks no hash" in weights["integrity"]

    # another model, other numbers: resnet18's default tag a1_in1k has crop_pct 0.95
    assert run(["encoders", "timm:resnet18", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["encoders"]
    assert row["layers"]["backbone"]["dim"] == 512 and row["preprocessing"]["resize_to"] == 235
    assert row["weights"][0]["name"] == "a1_in1k"

    assert run(["encoders", "timm:convnext_tiny.fb_in1k"]) == 0
    out = capsys.readouterr().out
    assert "768-d" in out and "resize 256 (bicubic), centre crop 224" in out
    assert "huggingface.co/timm/convnext_tiny.fb_in1k" in out and "licence: apache-2.0" in out


@pytest.mark.parametrize(
    "name, message",
    [("timm:not_a_model_xyz", "timm has no model 'not_a_model_xyz'"),
     ("timm:resnet18.no_such_tag", "timm's resnet18 has no pretrained weights 'no_such_tag'; it has: a1_in1k")],
)
def test_encoders_refuses_an_unknown_timm_model(capsys, name, message):
    assert run(["encoders", name]) == 2
    assert message in capsys.readouterr().err


def test_encoders_names_a_family_and_refuses_unknown_names(capsys):
    assert run(["encoders", "timm"]) == 0
    assert "`rcdm encoders timm:MODEL` shows one model's layers" in " ".join(capsys.readouterr().out.split())
    assert run(["encoders", "nosuch"]) == 2
    assert "unknown encoder 'nosuch'; available: barlow" in capsys.readouterr().err
    assert run(["encoders", "supervised@v9"]) == 2
    assert "no published weights 'v9'; it has: v1, v2" in capsys.readouterr().err


def _hub_cache(name: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--timm--{name}"


def test_timm_unreachable_hub_error_names_the_address_and_the_cache(monkeypatch, capfd):
    """timm failing as it does without a network, simulated: huggingface_hub logs its
    retries on its own stderr handler, then raises."""
    import logging

    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    real = timm.create_model
    seen = {}

    def offline_create(name, pretrained=False, **kwargs):
        if not pretrained:
            return real(name, pretrained=False, **kwargs)
        hub = logging.getLogger("huggingface_hub.utils._http")
        seen["logged"] = hub.isEnabledFor(logging.WARNING)
        hub.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD https://huggingface.co/...")
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub.")

    monkeypatch.setattr(timm, "create_model", offline_create)
    with pytest.raises(RcdmError) as info:
        create_encoder("timm:convnext_tiny.fb_in1k")
    message = str(info.value)
    assert "https://huggingface.co/timm/convnext_tiny.fb_in1k/resolve/main/model.safetensors" in message
    assert str(_hub_cache("convnext_tiny.fb_in1k")) in message and "--weights" in message
    assert "LocalEntryNotFoundError" in message
    assert seen == {"logged": False}
    assert "thrown while requesting" not in capfd.readouterr().err
    assert logging.getLogger("huggingface_hub").level == logging.WARNING  # restored afterwards


def test_timm_offline_uses_the_hub_cache_or_names_it(monkeypatch, tmp_path):
    import huggingface_hub
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("RCDM_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename, **kw: None)
    with pytest.raises(RcdmError) as info:
        create_encoder("timm:resnet18")
    message = str(info.value)
    assert "RCDM_OFFLINE" in message and "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors" in message
    assert str(_hub_cache("resnet18.a1_in1k")) in message

    source = timm.create_model("resnet18", pretrained=False)
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    cached = {("timm/resnet18.a1_in1k", "model.safetensors"): str(tmp_path / "model.safetensors")}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename, **kw: cached.get((repo, filename)))
    enc = create_encoder("timm:resnet18")
    source.reset_classifier(0)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc(x), source.eval()(enc.preprocessing.normalize(x)), atol=1e-5)


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


def test_a_cached_file_is_checked_against_the_published_digest(tmp_path):
    """A synthetic file under the published name cannot have torchvision's SHA-256
    prefix: it is refused by name, with what to do."""
    dest = encoder_cache_dir() / "resnet50-0676ba61.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(resnet50_state(with_fc=True), dest)
    with pytest.raises(RcdmError) as info:
        create_encoder("supervised")
    message = str(info.value)
    assert str(dest) in message and "starts with 0676ba61" in message and "delete it" in message
    assert not (dest.parent / "resnet50-0676ba61.pth.verified.json").exists()


def test_a_file_already_in_the_cache_is_used():
    """A source that publishes no hash: the cached file is used as it is, and no check
    is recorded (there was none)."""
    state = resnet50_state(with_fc=True)
    source = WeightSource(name="w", url="https://example.org/files/cached-r50.pth", license="MIT")
    dest = encoder_cache_dir() / "cached-r50.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    assert fetch_weights(source) == dest
    assert not dest.with_name("cached-r50.pth.verified.json").exists()


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


def test_the_list_is_readable_at_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert run(["encoders"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out
    rows = {r["name"]: r for r in get_registry().catalog()}
    for name, row in rows.items():
        for w in row["weights"]:
            # every source with its short licence, whole, on one line
            assert any(f"{w['name']}{'*' if w['default'] else ''} {w['license_short']}" in line for line in lines), name
    assert rows["swav"]["weights"][0]["license_short"] == "CC-BY-NC-4.0"
    assert rows["byol"]["weights"][0]["license_short"] == "Apache-2.0"


def test_the_detail_view_shows_each_source_licence_check_and_input(capsys):
    assert run(["encoders", "supervised"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo rich's wrapping
    assert "weights supervised@v2: torchvision IMAGENET1K_V2" in out
    assert "input for these weights: resize 232 (bilinear), centre crop 224, ImageNet mean/std" in out
    assert "licence: BSD-3-Clause (torchvision)" in out and "SHA-256 prefix 11ad3fa6" in out
    assert run(["encoders", "byol"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "input for these weights: resize 256 (bilinear), centre crop 224" in out  # byol@mmselfsup
    assert "licence: Apache-2.0 (deepmind-research repository); no separate weight licence stated" in out
    assert "check: no published hash: only completeness (the server's Content-Length)" in out
    assert run(["encoders", "byol", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["encoders"]
    assert [w["preprocessing_description"] for w in row["weights"]] == [
        None, "resize 256 (bilinear), centre crop 224, ImageNet mean/std"
    ]


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
    """The encoder plugin's code blocks of docs/plugins.md (the first of each
    language), by language."""
    blocks: dict[str, str] = {}
    for lang, body in re.findall(r"```([a-z]*)\n(.*?)```", DOCS.read_text(), re.S):
        blocks.setdefault(lang, textwrap.dedent(body))
    return blocks


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
