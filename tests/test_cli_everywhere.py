"""What holds for every command line: an unknown timm model name is answered with
the nearest names."""

from __future__ import annotations

import pytest

from rcdm_cli.cli.app import run


def _rcdm(capsys, *args):
    code = run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- timm names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed, first",
    [
        ("vit_base_patch16_244", "vit_base_patch16_224"),  # a typo
        ("resnet5", "resnet50"),  # unfinished
        ("convnxt_tiny", "convnext_tiny"),  # a letter left out
        ("VIT-BASE-PATCH16-224", "vit_base_patch16_224"),  # as written in a paper
    ],
)
def test_an_unknown_timm_model_suggests_the_nearest_names(capsys, typed, first):
    code, out, err = _rcdm(capsys, "encoders", f"timm:{typed}")
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"rcdm: error: timm has no model '{typed}'; similar: {first}, ")
    assert len(line.partition("similar: ")[2].split(", ")) <= 8


def test_close_model_names_order_and_fallbacks():
    from rcdm_plugins.timm_models import close_model_names

    models = ["convnext_tiny", "resnet18", "resnet50", "resnet50d", "vit_base_patch16_224", "vit_small_patch16_224", "wide_resnet50_2"]
    assert close_model_names("resnet5", models)[:2] == ["resnet50", "resnet50d"]
    assert "wide_resnet50_2" in close_model_names("resnet5", models)  # contains it
    assert close_model_names("vit_base_patch16_244", models)[0] == "vit_base_patch16_224"
    assert close_model_names("vit_enormous", models)[0].startswith("vit_")  # its first part
    assert close_model_names("zzzz", models) == []
    assert len(close_model_names("e", models, n=3)) == 3
