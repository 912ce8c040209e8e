"""rcdm evaluate attributes: the measures on numbers with known answers, the plugin
hook with a third-party attribute, the command's JSON schema, results and chart."""

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, make_tiny_state, rcdm
from rcdm_cli.checkpoint.metadata import CheckpointMeta, EncoderInfo
from rcdm_cli.checkpoint.store import save_checkpoint
from rcdm_cli.diffusion import PRESETS
from rcdm_cli.encoders import AttributeSpec, get_registry, hookimpl, reset_registry
from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.evaluation.attributes import carried, intervals, retrieval, score_attribute, select_attributes, spread
from rcdm_cli.evaluation.rank import chance
from rcdm_cli.preprocessing import RCDM

DOCS = REPO / "docs" / "plugins.md"


# --- the measures ---------------------------------------------------------------------------


def test_samples_that_copy_their_image_are_retrieved_first_and_do_not_spread():
    rng = np.random.default_rng(0)
    cond = rng.normal(size=(6, 3))
    samples = np.repeat(cond[:, None], 4, axis=1)
    r = retrieval(cond, samples)
    assert r["mrr"] == 1 and r["top1"] == 1 and r["mean_rank"] == 1
    s = spread(cond, samples)
    assert s["spread"] == 0 and s["within_variance"] == 0 and s["within_over_images"] == 0


def test_samples_that_ignore_their_image_score_chance_and_spread_fully():
    rng = np.random.default_rng(1)
    cond = rng.normal(size=(40, 2))
    samples = rng.normal(size=(40, 50, 2))  # drawn from the same law, whatever the image
    r = retrieval(cond, samples)
    assert r["mrr"] == pytest.approx(chance(40)["chance_mrr"], abs=0.03)
    assert r["mean_rank"] == pytest.approx(20.5, abs=1.5)
    s = spread(cond, samples)
    assert s["chance_spread"] == pytest.approx(40 * 49 / (40 * 50 - 1))
    assert s["spread"] == pytest.approx(s["chance_spread"], abs=0.02) and s["within_over_images"] == pytest.approx(1.0, abs=0.4)


def test_a_category_that_takes_one_value_ties_everywhere_at_chance():
    cond = np.eye(2)[[0, 0, 0, 0, 0]]
    samples = np.repeat(cond[:, None], 3, axis=1)
    r = retrieval(cond, samples)
    assert r["mean_rank"] == pytest.approx(3.0) and r["mrr"] == pytest.approx(chance(5)["chance_mrr"])
    assert r["tied_samples"] == 15
    spec = AttributeSpec("c", "", lambda x: x, categories=("a", "b"))
    two = np.eye(2)[[0, 0, 1, 1]]  # two pairs of images that share their category
    assert score_attribute(spec, two, np.repeat(two[:, None], 2, axis=1))["ceiling_mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert spread(cond, samples)["spread"] is None  # nothing varies: the ratio is undefined


def test_spread_by_hand():
    # two images, two samples each, 1-d: squared distances to each image's mean
    # 0.25 + 0.25 and 1 + 1, to the overall mean (2.75) 7.5625 + 3.0625 + 1.5625 + 10.5625
    samples = np.array([[[0.0], [1.0]], [[4.0], [6.0]]])
    s = spread(np.array([[0.0], [5.0]]), samples)
    assert s["spread"] == pytest.approx(((0.5 + 2.0) / 4) / (22.75 / 4))
    assert s["within_variance"] == pytest.approx((0.5 + 2.0) / 2)  # unbiased: over K - 1
    assert s["total_variance"] == pytest.approx(22.75 / 3)
    assert s["image_variance"] == pytest.approx(12.5)
    assert s["within_over_images"] == pytest.approx(1.25 / 12.5)
    assert s["chance_spread"] == pytest.approx(2 * 1 / 3)


def test_carried_is_one_when_samples_follow_the_view_and_zero_when_invariant():
    rng = np.random.default_rng(2)
    cond = rng.normal(size=(30, 2))
    change = rng.normal(size=(30, 2))
    noise = rng.normal(size=(30, 4, 2)) * 0.1
    samples = cond[:, None] + noise
    follows = carried(cond, cond + change, samples, samples + change[:, None])
    assert follows["carried"] == pytest.approx(1.0) and follows["ci_low"] <= 1.0 <= follows["ci_high"]
    still = carried(cond, cond + change, samples, samples)
    assert still["carried"] == pytest.approx(0.0) and still["ci_low"] <= 0.0 <= still["ci_high"]
    half = carried(cond, cond + change, samples, samples + 0.5 * change[:, None] + rng.normal(size=(30, 4, 2)) * 0.05)
    assert half["carried"] == pytest.approx(0.5, abs=0.05) and half["ci_low"] < 0.5 < half["ci_high"]
    none = carried(cond, cond, samples, samples + 1)
    assert none["carried"] is None and none["changed_images"] == 0


def test_the_bootstrap_interval_is_reproducible():
    rng = np.random.default_rng(3)
    cond, change = rng.normal(size=(10, 1)), rng.normal(size=(10, 1))
    samples = rng.normal(size=(10, 3, 1))
    aug = samples + 0.3 * change[:, None] + rng.normal(size=(10, 3, 1))
    assert carried(cond, cond + change, samples, aug, seed=5) == carried(cond, cond + change, samples, aug, seed=5)


def test_intervals_hold_the_estimates_and_shrink_with_more_images():
    rng = np.random.default_rng(4)

    def data(n):
        cond = rng.normal(size=(n, 2))
        return cond, cond[:, None] + rng.normal(size=(n, 4, 2)) * 0.8

    small, large = intervals(*data(10)), intervals(*data(200))
    cond, samples = data(30)
    ci = intervals(cond, samples)
    assert ci["mrr_ci"][0] <= retrieval(cond, samples)["mrr"] <= ci["mrr_ci"][1]
    assert ci["spread_ci"][0] <= spread(cond, samples)["spread"] <= ci["spread_ci"][1]
    width = lambda c, key: c[key][1] - c[key][0]  # noqa: E731
    assert width(large, "spread_ci") < width(small, "spread_ci") / 2
    assert intervals(cond, samples, seed=1) == intervals(cond, samples, seed=1)


# --- the plugin hook --------------------------------------------------------------------------


def _redness(images: np.ndarray) -> np.ndarray:
    return images[..., 0].mean(axis=(1, 2)) - images[..., 1:].mean(axis=(1, 2, 3))


def _darkness(images: np.ndarray) -> np.ndarray:
    return (images.mean(axis=(1, 2, 3)) < 0.3).astype(np.int64)


class _ToyAttributes:
    @staticmethod
    @hookimpl
    def register_attributes(register):
        register(AttributeSpec("redness", "red minus the other channels", _redness, group="toy"))
        register(AttributeSpec("darkness", "dark or not", _darkness, categories=("light", "dark"), group="toy"))


@pytest.fixture
def toy_attributes():
    reset_registry()
    get_registry().add_plugin(_ToyAttributes, origin="tests")
    yield
    reset_registry()


def test_attributes_are_chosen_by_name_or_group(toy_attributes):
    assert [s.name for s in select_attributes(["toy"])] == ["redness", "darkness"]
    assert [s.name for s in select_attributes(["darkness", "redness", "darkness"])] == ["darkness", "redness"]
    with pytest.raises(UsageError, match="unknown attribute 'sepia'; available: .*redness"):
        select_attributes(["sepia"])


def test_attribute_values_are_checked():
    images = np.zeros((3, 8, 8, 3), dtype=np.float32)
    category = AttributeSpec("c", "", lambda x: np.array([0, 1, 1]), categories=("a", "b"))
    assert category.values(images).tolist() == [[1, 0], [0, 1], [0, 1]]
    assert category.summary_value(category.values(images)).tolist() == [0, 1, 1]
    with pytest.raises(RcdmError, match="category index outside"):
        AttributeSpec("c", "", lambda x: np.array([0, 2, 1]), categories=("a", "b")).values(images)
    with pytest.raises(RcdmError, match="NaN"):
        AttributeSpec("s", "", lambda x: np.full(3, np.nan)).values(images)
    with pytest.raises(RcdmError, match=r"not \(3, 2\)"):
        AttributeSpec("v", "", lambda x: np.zeros((3, 3)), dim=2).values(images)


def test_a_plugin_registering_a_bad_attribute_is_reported(capsys):
    class Bad:
        @staticmethod
        @hookimpl
        def register_attributes(register):
            register(AttributeSpec("Bad Name", "", _redness))

    reset_registry()
    try:
        get_registry().add_plugin(Bad, origin="bad-plugin 1.0", label="bad (bad-plugin 1.0)")
        assert "Bad Name" not in get_registry().attributes
        assert "invalid attribute name" in get_registry().failed["bad (bad-plugin 1.0)"]
    finally:
        reset_registry()


def test_two_plugins_registering_one_attribute_is_an_error_naming_both():
    reset_registry()
    try:
        get_registry().add_plugin(_ToyAttributes, origin="one 1.0")

        class Again:
            @staticmethod
            @hookimpl
            def register_attributes(register):
                register(AttributeSpec("redness", "again", _redness))

        get_registry().add_plugin(Again, origin="two 2.0")
        with pytest.raises(RcdmError, match="attribute 'redness' is registered twice: by .* and by .*"):
            get_registry().attributes
    finally:
        reset_registry()


# --- the command ------------------------------------------------------------------------------


def _checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny RCDM on the thumbnail encoder (no weights to download)."""
    meta = CheckpointMeta(
        unet=PRESETS["tiny"].unet.with_rep_dim(48), diffusion=PRESETS["tiny"].diffusion,
        encoder=EncoderInfo(name="thumbnail", layer="backbone", rep_dim=48, preprocessing=RCDM.to_dict()),
    )
    save_checkpoint(path, {"model": make_tiny_state(48, seed)}, meta)
    return path


def _folder(root: Path, count: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        arr = np.zeros((48, 40, 3), dtype=np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        arr[10:30, 10:25] = 255 - arr[10:30, 10:25]
        Image.fromarray(arr).save(root / f"{i}.png")
    return root


FAST = ["-n", 2, "--sampler", "ddim", "--steps", "ddim2", "--batch-size", 8]


@pytest.mark.slow
def test_command_json_schema_results_table_and_chart(capsys, toy_attributes, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    images = _folder(tmp_path / "imgs")
    a, b = _checkpoint(tmp_path / "a.safetensors"), _checkpoint(tmp_path / "b.safetensors", seed=1)
    results, chart = tmp_path / "results.jsonl", tmp_path / "chart.png"
    args = ["evaluate", "attributes", images, "-c", a, "-c", b, "--attribute", "toy", "--augment", "grayscale", "--augment", "hflip",
            *FAST, "--results", results, "--plot", chart]
    code, out, err = rcdm(capsys, *args, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["metric"] == "attributes" and result["plot"] == str(chart)
    first, second = result["representations"]
    assert first["checkpoint"]["path"] == str(a) and second["checkpoint"]["path"] == str(b)
    assert (first["encoder"], first["layer"], first["images"], first["samples_per_image"]) == ("thumbnail", "backbone", 4, 2)
    for record in result["representations"]:
        assert set(record["attributes"]) == {"redness", "darkness"}
        for name, score in record["attributes"].items():
            for key in ("mean_rank", "mrr", "top1", "top5", "chance_mean_rank", "chance_mrr", "chance_top1", "spread",
                        "chance_spread", "within_variance", "total_variance", "image_variance", "images", "samples_per_image",
                        "mrr_ci", "spread_ci", "ceiling_mrr"):
                assert key in score, (name, key)
            assert score["images"] == 4 and score["samples_per_image"] == 2 and score["chance_mrr"] == pytest.approx(chance(4)["chance_mrr"])
            assert 1 <= score["mean_rank"] <= 4 and (score["spread"] is None or 0 <= score["spread"] <= 1)
        assert record["attributes"]["redness"]["kind"] == "scalar" and record["attributes"]["darkness"]["kind"] == "category"
        assert set(record["augmentations"]) == {"grayscale", "hflip"}
        gray = record["augmentations"]["grayscale"]
        assert gray["trained"] is True and "colourfulness" in gray["changes"]
        red = gray["attributes"]["redness"]
        for key in ("carried", "ci_low", "ci_high", "image_change", "sample_change", "images_original", "images_augmented",
                    "samples_original", "samples_augmented"):
            assert key in red
        assert red["images_augmented"] == pytest.approx(0.0, abs=1e-6)  # a grayscale image has no red excess
        assert record["sampling"]["network_calls"] == 2 * 3  # the originals, then two augmentations
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["metric"] for r in records] == ["attributes", "attributes"]
    assert Image.open(chart).size[0] > 500
    code, out, err = rcdm(capsys, "evaluate", "table", results, "--metric", "attributes", "--plot", chart)
    assert code == 2 and "already exists" in err
    code, out, err = rcdm(capsys, "evaluate", "table", results, "--metric", "attributes", "--plot", tmp_path / "again.png")
    assert code == 0, err
    assert "redness" in out and "darkness" in out and "MRR" in out and "spread" in out
    assert "chance: MRR 0.521, spread 0.57" in out and "a.safetensors)" in out and "b.safetensors)" in out
    assert (tmp_path / "again.png").is_file()
    code, out, err = rcdm(capsys, "evaluate", "table", results, "--metric", "attributes", "--json")
    assert code == 0 and len(json.loads(out)["rows"]) == 2


@pytest.mark.slow
def test_real_photographs_get_every_default_attribute_with_chance_values(capsys, tmp_path):
    """The five public-domain photographs of tests/data/photos, an RCDM on the
    thumbnail encoder: every built-in image attribute is measured, with its chance."""
    photos = Path(__file__).parent / "data" / "photos"
    code, out, err = rcdm(capsys, "evaluate", "attributes", photos, "-c", _checkpoint(tmp_path / "a.safetensors"), *FAST,
                          "--no-results", "--json")
    assert code == 0, err
    (record,) = json.loads(out)["representations"]
    assert record["images"] == 5 and len(record["image_paths"]) == 5
    expected = {"colourfulness", "grayscale", "background-colour", "colour-histogram", "brightness", "contrast", "detail",
                "hue", "fg-x", "fg-y", "fg-scale"}
    assert set(record["attributes"]) == expected
    for score in record["attributes"].values():
        assert score["chance_mrr"] == pytest.approx(chance(5)["chance_mrr"]) and score["chance_mean_rank"] == 3
        assert 0.2 <= score["mrr"] <= 1
    assert record["attributes"]["grayscale"]["images_mean"] == 0  # the photographs are in colour


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attribute", "sepia"], "unknown attribute 'sepia'"),
        (["--augment", "sepia"], "unknown augmentation 'sepia'"),
        (["-n", 1], "-n must be at least 2"),
        (["-c", "b", "--encoder", "thumbnail"], "apply to one --checkpoint"),
    ],
)
def test_command_refuses_bad_requests_before_work(capsys, toy_attributes, tmp_path, extra, message):
    images = _folder(tmp_path / "imgs")
    ckpt = _checkpoint(tmp_path / "a.safetensors")
    if "b" in extra:
        extra = [str(_checkpoint(tmp_path / "b.safetensors")) if e == "b" else e for e in extra]
    code, _, err = rcdm(capsys, "evaluate", "attributes", images, "-c", ckpt, "--attribute", "toy", "--no-results", *extra)
    assert code == 2 and message in err and "internal error" not in err


def test_one_image_is_not_enough(capsys, toy_attributes, tmp_path):
    images = _folder(tmp_path / "imgs", count=1)
    code, _, err = rcdm(capsys, "evaluate", "attributes", images, "-c", _checkpoint(tmp_path / "a.safetensors"), "--attribute", "toy", "--no-results")
    assert code == 2 and "at least two conditioning images" in err


def test_attributes_listing(capsys, toy_attributes):
    code, out, err = rcdm(capsys, "attributes", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["attributes"]}
    assert rows["darkness"]["categories"] == ["light", "dark"] and rows["darkness"]["kind"] == "category"
    assert rows["redness"]["plugin"] == "tests"
    code, out, err = rcdm(capsys, "attributes", "darkness")
    assert code == 0 and "dark or not" in out and "group toy" in out
    code, _, err = rcdm(capsys, "attributes", "sepia")
    assert code == 2 and "unknown attribute 'sepia'" in err


def _attribute_plugin_block() -> str:
    """The attribute plugin's code block of docs/plugins.md."""
    text = DOCS.read_text()
    section = text[text.index("## An attribute plugin"):]
    return textwrap.dedent(re.search(r"```python\n(.*?)```", section, re.S).group(1))


def test_the_documented_attribute_plugin_installs_and_is_measured(tmp_path, monkeypatch, capsys):
    """docs/plugins.md's attribute plugin, installed as pip would (a dist-info with
    entry_points.txt on sys.path), is listed and measured by the command."""
    site = tmp_path / "site"
    dist_info = site / "rcdm_warmth-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: rcdm-warmth\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[rcdm]\nwarmth = rcdm_warmth\n")
    (site / "rcdm_warmth.py").write_text(_attribute_plugin_block())
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    try:
        code, out, err = rcdm(capsys, "attributes", "--json")
        assert code == 0, err
        rows = {r["name"]: r for r in json.loads(out)["attributes"]}
        assert rows["warmth"]["plugin"] == "rcdm-warmth 0.1"
        images = _folder(tmp_path / "imgs")
        code, out, err = rcdm(capsys, "evaluate", "attributes", images, "-c", _checkpoint(tmp_path / "a.safetensors"),
                              "--attribute", "warmth", *FAST, "--no-results", "--json")
        assert code == 0, err
        score = json.loads(out)["representations"][0]["attributes"]["warmth"]
        assert score["images"] == 4 and 0 < score["mrr"] <= 1
    finally:
        sys.modules.pop("rcdm_warmth", None)
        reset_registry()
