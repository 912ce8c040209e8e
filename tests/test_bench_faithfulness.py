"""bench/faithfulness.py on a shrunk demo: the curves and the one-command comparison
measure what they say (the reference against itself, paired differences, calls)."""

import importlib.util
import json
import sys

import pytest
import torch
from PIL import Image

from helpers import REPO
from rcdm_cli.demo.run import DemoSettings, run_demo

SHRUNK = dict(train_images=16, heldout_images=2, steps=2, batch_size=4, samples=2, sampling_steps="2", grid_rows=1,
              interpolation_frames=2, augmentations=())


def _bench():
    """The script as a module (registered, as dataclasses need)."""
    if "faithfulness" not in sys.modules:
        spec = importlib.util.spec_from_file_location("faithfulness", REPO / "bench" / "faithfulness.py")
        module = sys.modules["faithfulness"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["faithfulness"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "demo"
    run_demo(DemoSettings(out=out, **SHRUNK), torch.device("cpu"))
    return out


def test_config_syntax():
    config = _bench().Config("dpm++2m:logsnr10@1/bf16/compile")
    assert (config.sampler, config.steps, config.seed_offset, config.precision, config.compile) == (
        "dpm++2m", "logsnr10", 1, "bf16", True
    )
    assert config.family == "dpm++2m logsnr bf16 compile (noise 1)"
    plain = _bench().Config("ddpm:100")
    assert (plain.sampler, plain.steps, plain.seed_offset, plain.precision, plain.compile) == ("ddpm", "100", 0, "fp32", False)
    # --compare alone: rcdm's own fast default, in float32 and in bf16
    from rcdm_cli.pipeline.sampling import FAST

    assert _bench().parse_args(["demo", "--compare"]).compare == [f"{FAST[0]}:{FAST[1]}", f"{FAST[0]}:{FAST[1]}/bf16"]


@pytest.mark.slow
def test_curves_measure_every_configuration_against_the_reference(demo, tmp_path, capsys):
    bench = _bench()
    report_path = tmp_path / "curves.json"
    bench.main([str(demo), "--models", "head", "--images", "4", "--samples", "2", "--batch-size", "8",
                "--reference", "ddpm:10", "--configs", "dpm++2m:logsnr4,ddpm:10@1,ddim:quad5", "--json", str(report_path),
                "--plot", str(tmp_path / "curves.png"), "--grids", str(tmp_path / "grids"), "--quiet"])
    table = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    (model,) = report["models"]
    rows = {r["config"]: r for r in model["rows"]}
    assert list(rows) == ["ddpm:10", "dpm++2m:logsnr4", "ddpm:10@1", "ddim:quad5"]  # the reference first
    assert [rows[c]["calls"] for c in rows] == [10, 4, 10, 5]
    assert rows["ddpm:10"]["mrr_difference"] == 0 and rows["ddpm:10"]["mrr_difference_ci"] == [0, 0]
    other = rows["ddpm:10@1"]
    assert other["mrr_difference"] == pytest.approx(other["rank"]["mrr"] - rows["ddpm:10"]["rank"]["mrr"])
    lo, hi = other["mrr_difference_ci"]
    assert lo <= other["mrr_difference"] <= hi
    assert set(rows["ddim:quad5"]["factors"]) >= {"scene-shape", "scene-colour", "scene-size"}
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert 0 < rows["ddim:quad5"]["detail"] and 0 < model["images_detail"]
    grid = Image.open(tmp_path / "grids" / "head.png")
    assert grid.height > 4 * grid.width / 8  # the scenes, then a row per configuration
    # a kept report prints the same table again
    bench.main(["--show", str(report_path)])
    assert capsys.readouterr().out == table


@pytest.mark.slow
def test_compare_times_the_original_against_the_fast_configuration(demo, capsys):
    bench = _bench()
    bench.main([str(demo), "--models", "backbone", "--images", "4", "--samples", "2", "--batch-size", "8",
                "--reference", "ddpm:20", "--compare", "dpm++2m:2", "--quiet"])
    lines = capsys.readouterr().out.splitlines()
    original = next(line for line in lines if "(original)" in line).split(" | ")
    fast = next(line for line in lines if "dpm++2m:2" in line).split(" | ")
    assert original[2] == "20" and original[4] == "1.0"
    assert fast[2] == "2" and float(fast[4]) > 2  # 10 times fewer calls
