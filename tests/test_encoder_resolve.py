"""One resolution of ``--encoder``, ``--layer``, ``--weights`` and ``--preprocessing``
for every command, without building anything; the named types plugins declare with
(plain tuples from older plugins still accepted); and the public plugin module."""

from __future__ import annotations

import ast
import re

import pytest
import torch

import rcdm_cli.plugin
from helpers import REPO
from rcdm_cli.encoders import (
    EncoderName,
    EncoderRegistry,
    EncoderSpec,
    FamilyMember,
    Layer,
    Lookup,
    UnknownLayer,
    create_encoder,
    get_registry,
    hookimpl,
    reset_registry,
    resolve_encoder,
)
from rcdm_cli.errors import UsageError
from rcdm_cli.plugin import IMAGENET, RCDM, Preprocessing, WeightSource


@pytest.fixture(autouse=True)
def _fresh_registry():
    reset_registry()
    yield
    reset_registry()


def test_a_name_alone_resolves_to_the_default_layer_weights_and_input():
    resolved = resolve_encoder("supervised")
    assert (resolved.canonical, resolved.display_name, resolved.variant) == ("supervised", "supervised", None)
    assert resolved.layer == "backbone" and resolved.dim == 2048
    assert resolved.source.name == "v1" and resolved.plugin.startswith("rcdm ")
    assert resolved.preprocessing == resolved.native_preprocessing == IMAGENET
    assert set(resolved.layers) == {"backbone", "layer3", "logits"} and resolved.weights_path is None


def test_the_weights_named_decide_the_native_input_and_the_display_name():
    v2 = resolve_encoder("supervised@v2", "logits")
    assert (v2.canonical, v2.display_name, v2.variant, v2.dim) == ("supervised", "supervised@v2", "v2", 1000)
    assert v2.native_preprocessing == v2.preprocessing == v2.source.preprocessing != IMAGENET
    assert resolve_encoder("supervised@v1").display_name == "supervised"  # the default weights go unnamed
    assert resolve_encoder("supervised@v2", preprocessing="rcdm").preprocessing == RCDM


def test_a_missing_layer_is_refused_naming_the_encoder_as_given_and_its_layers():
    message = "encoder 'supervised@v2' has no layer 'head'; it has: backbone, layer3, logits"
    with pytest.raises(UnknownLayer, match=re.escape(message)):
        resolve_encoder("supervised@v2", "head")
    assert issubclass(UnknownLayer, UsageError)  # exit code 2, as before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "nosuch"}, "unknown encoder 'nosuch'; available:"),
        ({"name": "supervised@v9"}, "no published weights 'v9'; it has: v1, v2"),
        ({"name": "timm"}, "family of encoders: name one as timm:MODEL"),
        ({"name": "random", "preprocessing": "sepia"}, "unknown preprocessing 'sepia': expected native or rcdm"),
        ({"name": "random", "weights": "/nonexistent/w.pth"}, "no such weights file: /nonexistent/w.pth"),
    ],
)
def test_other_mistakes_keep_their_messages(kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        resolve_encoder(**kwargs)


def test_a_resolved_encoder_builds_what_create_encoder_builds(tmp_path):
    resolved = resolve_encoder("thumbnail", "8x8", preprocessing="rcdm")
    built, made = resolved.build(), create_encoder("thumbnail", preprocessing="rcdm")
    assert (built.name, built.preprocessing, built.plugin) == (made.name, made.preprocessing, made.plugin)
    images = torch.rand(2, 3, 224, 224)
    assert torch.equal(built(images, resolved.layer), made(images, "8x8"))
    assert built(images, resolved.layer).shape == (2, resolved.dim)


def test_with_layer_checks_the_new_layer():
    resolved = resolve_encoder("thumbnail")
    assert resolved.with_layer("2x2").dim == 12 and resolved.with_layer(None).layer == "backbone"
    with pytest.raises(UnknownLayer, match="has no layer 'head'"):
        resolved.with_layer("head")


def test_get_returns_a_named_lookup_that_still_unpacks_and_indexes():
    found = get_registry().get("supervised@v2")
    assert isinstance(found, Lookup) and found.spec.name == "supervised" and found.plugin.startswith("rcdm ")
    entry, parsed = found
    assert found[0] is entry and entry.spec is found.spec and parsed == EncoderName("supervised", "v2")


# --- the named types, and the plain tuples older plugins give ----------------------------


def test_plain_layer_pairs_become_layers():
    spec = EncoderSpec(name="pairs", description="", build=lambda r: None, layers={"backbone": (4, "x")})
    assert spec.layers == {"backbone": Layer(4, "x")} and spec.layers["backbone"].dim == 4
    assert spec.layers["backbone"] == (4, "x")  # still a pair to code that unpacks it


@pytest.mark.parametrize(
    "described",
    [
        ({"backbone": (8, "pooled")}, Preprocessing("fam", size=32, resize_to=36)),
        ({"backbone": (8, "pooled")}, Preprocessing("fam", size=32, resize_to=36), ()),
        FamilyMember({"backbone": Layer(8, "pooled")}, Preprocessing("fam", size=32, resize_to=36)),
    ],
    ids=["pair", "triple", "named"],
)
def test_a_family_may_describe_its_members_as_plain_tuples_or_family_members(described):
    class Family:
        @staticmethod
        @hookimpl
        def register_encoders(register):
            register(
                EncoderSpec(
                    name="fam", description="", build=lambda r: None, family=True, describe=lambda argument: described
                )
            )

    registry = EncoderRegistry(load_entry_points=False)
    registry.add_plugin(Family, origin="fam 1.0")
    member = registry.describe("fam:one")
    assert isinstance(member, FamilyMember) and member.weights == ()
    assert member.layers == {"backbone": Layer(8, "pooled")} and member.preprocessing.size == 32
    resolved = registry.resolve("fam:one")
    assert (resolved.canonical, resolved.layer, resolved.dim, resolved.plugin) == ("fam:one", "backbone", 8, "fam 1.0")
    assert registry.member("fam:one")["layers"] == {"backbone": {"dim": 8, "description": "pooled"}}


def test_family_member_weights_are_kept():
    source = WeightSource(name="w", url=None, license="CC0-1.0")
    member = FamilyMember.of(({"b": (1, "")}, IMAGENET, [source]))
    assert member.weights == (source,) and member.layers == {"b": Layer(1, "")}


# --- the plugin module ----------------------------------------------------------------------


def test_the_plugin_module_exports_what_it_lists():
    assert all(hasattr(rcdm_cli.plugin, name) for name in rcdm_cli.plugin.__all__)
    for name in ("hookimpl", "EncoderSpec", "AttributeSpec", "WeightSource", "BuildRequest", "Layer", "FamilyMember"):
        assert name in rcdm_cli.plugin.__all__


def test_built_in_plugins_import_rcdm_as_a_third_party_plugin_would():
    """Not from the host package itself: what they share with third-party plugins comes
    from rcdm_cli.plugin, helpers only they use from the modules that hold them."""
    offenders = []
    for path in sorted((REPO / "plugins").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("rcdm_cli.encoders", "rcdm_cli.encoders.registry"):
                offenders.append(f"{path.name}: from {node.module} import ...")
            if isinstance(node, ast.ImportFrom) and node.module in ("rcdm_cli.encoders.spec", "rcdm_cli.errors"):
                offenders.append(f"{path.name}: from {node.module} import ... (public: rcdm_cli.plugin)")
    assert not offenders, "\n".join(offenders)
