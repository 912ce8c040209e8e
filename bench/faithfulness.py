"""Faithfulness against network calls, on trained models: which sampler, and how few
steps, keep what the original's 100 ancestral steps keep.

    rcdm demo --full --out rcdm-demo-full        # the three miniature RCDMs (about 27 min)
    python bench/faithfulness.py rcdm-demo-full  # every configuration on every model

For each model in the demo folder's ``runs/`` and each sampling configuration, on
fresh held-out scenes (the same scenes, the same initial noise per sample for every
configuration):

- MRR in the encoder's space (`evaluate rank`), and its difference from the
  reference configuration (``ddpm:100``, the original) with a 95% bootstrap interval
  over the scenes, paired: each scene's reciprocal ranks under both configurations;
- per scene factor (shape, colour, background, size, position, grayscale), the
  factor's MRR and spread (`evaluate attributes`), averaged in the table and kept in
  full in the JSON;
- the samples' mean detail (edge density; blurred samples have less), as a check that
  few steps do not buy their MRR with blurred images;
- network calls per sample and the seconds the sampling took.

A second ``ddpm:100`` with other noise (``ddpm:100@1``) shows how much of a difference
is sampling noise alone. ``--json`` keeps everything; ``--plot`` draws MRR against
network calls, one panel per model; ``--grids DIR`` shows the first samples under
every configuration; ``--show FILE`` prints a kept report again.

``--compare [CONFIG,...]`` is the one-command speed claim: the original configuration
against the given ones (by default rcdm's fast default, in float32 and in bf16) on
the same model and scenes, with seconds, the speed ratio and the MRR of each.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rcdm_cli.scenes import make_scenes
from rcdm_cli.encoders import get_registry
from rcdm_cli.evaluation.attributes import attribute_values, conditioning_views, sample_views, score_attribute, select_attributes
from rcdm_cli.evaluation.rank import ranks, summarize
from rcdm_cli.imaging import to_pil
from rcdm_cli.pipeline.runner import RCDMRun
from rcdm_cli.pipeline.sampling import FAST, SamplingOptions

REFERENCE = "ddpm:100"
GRID_SCENES, GRID_SAMPLES = 4, 2
# what --compare alone compares with the original: rcdm's default for the models it
# trains, in float32 and in bf16
DEFAULT_FAST = (f"{FAST[0]}:{FAST[1]}", f"{FAST[0]}:{FAST[1]}/bf16")
DEFAULT_CONFIGS = (
    "ddpm:100", "ddpm:100@1", "ddpm:50", "ddpm:25",
    "ddim:10", "ddim:15", "ddim:25", "ddim:50",
    "dpm++2m:5", "dpm++2m:8", "dpm++2m:10", "dpm++2m:15", "dpm++2m:20", "dpm++2m:25",
    "dpm++2m:logsnr5", "dpm++2m:logsnr8", "dpm++2m:logsnr10", "dpm++2m:logsnr15",
    "dpm++2m:quad8", "dpm++2m:quad10", "dpm++2m:quad15",
    "dpm++3m:8", "dpm++3m:10", "dpm++3m:15", "dpm++3m:logsnr8", "dpm++3m:logsnr10", "dpm++3m:logsnr15",
    "dpm++3m:quad10", "dpm++3m:quad15",
)


@dataclass(frozen=True)
class Config:
    """``sampler:steps``, then optionally ``@N`` (other noise: the seed plus N) and
    ``/bf16``, ``/compile`` (the network's fast paths), e.g. ``dpm++2m:logsnr10/bf16``."""

    text: str

    @property
    def _base(self) -> str:
        return self.text.split("/")[0]

    @property
    def sampler(self) -> str:
        return self._base.split(":")[0]

    @property
    def steps(self) -> str:
        return self._base.split(":")[1].split("@")[0]

    @property
    def seed_offset(self) -> int:
        return int(self._base.split("@")[1]) if "@" in self._base else 0

    @property
    def precision(self) -> str:
        return "bf16" if "bf16" in self.text.split("/")[1:] else "fp32"

    @property
    def compile(self) -> bool:
        return "compile" in self.text.split("/")[1:]

    @property
    def family(self) -> str:
        """The curve a configuration belongs to: sampler, step spacing, fast paths."""
        spacing = "".join(c for c in self.steps if c.isalpha()) or "uniform"
        paths = "".join(f" {m}" for m in self.text.split("/")[1:])
        return f"{self.sampler} {spacing}{paths}" + (f" (noise {self.seed_offset})" if self.seed_offset else "")

    def options(self, args) -> SamplingOptions:
        return SamplingOptions(
            sampler=self.sampler, steps=self.steps, seed=args.seed + self.seed_offset, batch_size=args.batch_size,
            precision=self.precision, compile=self.compile,
        )


def _bootstrap_difference(a: np.ndarray, b: np.ndarray, seed: int, rounds: int = 2000) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) over scenes resampled with replacement;
    ``a`` and ``b`` are per-scene values under two configurations (paired)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(rounds, len(a)))
    diffs = a[picks].mean(axis=1) - b[picks].mean(axis=1)
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def _rank_table(run, samples: torch.Tensor, reps: torch.Tensor):
    flat = [to_pil(s) for s in samples.reshape(-1, *samples.shape[2:])]
    return ranks(run.encode(flat).reshape(samples.shape[0], samples.shape[1], -1), reps)


def measure_model(run_dir: Path, pictures, configs: list[Config], args, log) -> dict:
    run = RCDMRun.prepare(checkpoint=str(run_dir), device=torch.device("cpu"))
    reps = run.encode(pictures)
    specs = select_attributes(["scene"])
    cond_images = conditioning_views(pictures, run.meta.image_size)
    cond_values = {s.name: attribute_values(s, cond_images) for s in specs}
    (detail_spec,) = select_attributes(["detail"])  # edge density: blurred samples have less
    rows, per_scene, shown = [], {}, []
    for config in configs:
        options = config.options(args)
        calls = run.check(None, args.samples, options).num_timesteps
        started = time.perf_counter()
        samples = run.sample(reps, args.samples, options).samples
        seconds = time.perf_counter() - started
        table = _rank_table(run, samples, reps)
        per_scene[config.text] = table.expected_reciprocal_rank().mean(dim=1).double().numpy()
        images = sample_views(samples)
        factors = {}
        for s in specs:
            values = attribute_values(s, images).reshape(len(pictures), args.samples, -1)
            score = score_attribute(s, cond_values[s.name], values, args.seed)
            factors[s.name] = {"mrr": score["mrr"], "spread": score["spread"]}
        detail = attribute_values(detail_spec, images).mean()
        rows.append({
            "config": config.text, "family": config.family, "sampler": config.sampler, "steps": config.steps,
            "precision": config.precision, "compile": config.compile,
            "calls": calls, "seconds": round(seconds, 2), "rank": summarize(table), "factors": factors,
            "detail": float(detail),
        })
        shown.append((config.text, samples[:GRID_SCENES, :GRID_SAMPLES]))
        log(f"{run_dir.name}: {config.text}: MRR {rows[-1]['rank']['mrr']:.3f}, {calls} calls, {seconds:.0f} s")
    reference = per_scene.get(args.reference)
    for row in rows:
        if reference is not None:
            mine = per_scene[row["config"]]
            row["mrr_difference"] = float(mine.mean() - reference.mean())
            row["mrr_difference_ci"] = _bootstrap_difference(mine, reference, args.seed)
    label = f"{get_registry().display_name(run.plan.encoder)}/{run.plan.layer}"
    if args.grids:
        _save_grid(args.grids / f"{run_dir.name}.png", pictures[:GRID_SCENES], shown)
    images_detail = float(attribute_values(detail_spec, cond_images).mean())
    return {
        "model": run_dir.name, "label": label, "checkpoint": str(run_dir), "images_detail": images_detail, "rows": rows,
    }


def _save_grid(path: Path, scenes, shown) -> None:
    """One row per configuration: the first samples of the first scenes (the scenes
    themselves in the first row), to see what few steps do to an image."""
    from rcdm_cli.imaging import make_grid, save_png

    k = shown[0][1].shape[1]
    tiles = [scene for scene in scenes for _ in range(k)]
    labels = ["scene"] * len(tiles)
    for text, samples in shown:
        tiles += [to_pil(samples[j, s]) for j in range(samples.shape[0]) for s in range(k)]
        labels += [text] + [""] * (samples.shape[0] * k - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(make_grid(tiles, labels, columns=len(scenes) * k), path)


def compare_model(run_dir: Path, pictures, fast: list[Config], args, log) -> dict:
    """The original configuration against the fast ones on one model: seconds to
    draw every sample (warm: a first batch is drawn untimed, which is when
    ``/compile`` compiles), the speed ratio and the MRR of each. A fast configuration
    is timed before and after the original and its mean taken, so that a machine
    whose speed drifts does not favour either side."""
    run = RCDMRun.prepare(checkpoint=str(run_dir), device=torch.device("cpu"))
    reps = run.encode(pictures)
    per_batch = max(1, args.batch_size // args.samples)
    results: dict[str, dict] = {}

    def timed(config: Config) -> float:
        options = config.options(args)
        entry = results.setdefault(config.text, {"config": config.text, "times": []})
        if "warmup_seconds" not in entry:
            started = time.perf_counter()
            run.sample(reps[:per_batch], args.samples, options)
            entry["warmup_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        samples = run.sample(reps, args.samples, options).samples
        entry["times"].append(time.perf_counter() - started)
        entry["calls"] = run.check(None, args.samples, options).num_timesteps
        entry["samples"] = samples
        log(f"{run_dir.name}: {config.text}: {entry['times'][-1]:.1f} s")
        return entry["times"][-1]

    original = Config(args.reference)
    for config in fast:
        timed(config)
    timed(original)
    for config in fast:
        timed(config)
    per_scene = {}
    rows = []
    for text, entry in results.items():
        table = _rank_table(run, entry.pop("samples"), reps)
        per_scene[text] = table.expected_reciprocal_rank().mean(dim=1).double().numpy()
        entry["seconds"] = round(float(np.mean(entry.pop("times"))), 2)
        entry["rank"] = summarize(table)
        rows.append(entry)
    base = results[args.reference]["seconds"]
    for row in rows:
        row["speedup"] = round(base / row["seconds"], 2)
        row["mrr_difference"] = float(per_scene[row["config"]].mean() - per_scene[args.reference].mean())
        row["mrr_difference_ci"] = _bootstrap_difference(per_scene[row["config"]], per_scene[args.reference], args.seed)
    label = f"{get_registry().display_name(run.plan.encoder)}/{run.plan.layer}"
    return {"model": run_dir.name, "label": label, "checkpoint": str(run_dir), "rows": rows}


def compare_lines(report: dict) -> list[str]:
    lines = [
        f"{report['machine']}, {report['date']}; {report['images']} scenes x {report['samples']} samples, "
        f"batch {report['batch_size']}; seconds to draw them all (warm); difference: MRR minus the original's, "
        "paired, 95% bootstrap interval",
        "",
        "| model | configuration | calls | s | x original | MRR | difference | first batch s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in report["models"]:
        for row in model["rows"]:
            lo, hi = row["mrr_difference_ci"]
            name = f"{row['config']} (original)" if row["config"] == report["reference"] else row["config"]
            lines.append(
                f"| {model['label']} | {name} | {row['calls']} | {row['seconds']:.1f} | {row['speedup']:.1f} | "
                f"{row['rank']['mrr']:.3f} | {row['mrr_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {row['warmup_seconds']:.1f} |"
            )
    return lines


def run_all(args) -> dict:
    demo = Path(args.demo)
    runs = sorted(p for p in (demo / "runs").iterdir() if (p / "config.json").exists()) if (demo / "runs").is_dir() else []
    if args.models:
        runs = [p for p in runs if p.name in args.models]
    if not runs:
        sys.exit(f"error: no trained models in {demo / 'runs'}; run `rcdm demo --full --out {demo}` first")
    configs = [Config(c) for c in args.configs]
    if args.reference not in args.configs:
        configs.insert(0, Config(args.reference))
    # fresh scenes from the same distribution, not the demo's training or held-out ones
    pictures = [image for image, _ in make_scenes(args.images, seed=10_000 + args.seed)]
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if args.compare:
        models = [compare_model(p, pictures, [Config(c) for c in args.compare], args, log) for p in runs]
    else:
        models = [measure_model(p, pictures, configs, args, log) for p in runs]
    return {
        "mode": "compare" if args.compare else "curves", "batch_size": args.batch_size,
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"), "demo": str(demo), "images": args.images, "samples": args.samples,
        "seed": args.seed, "reference": args.reference, "models": models,
    }


def _mean(values) -> str:
    known = [v for v in values if v is not None]
    return f"{np.mean(known):.3f}" if known else "-"


def table_lines(report: dict) -> list[str]:
    lines = [
        f"{report['machine']}, {report['date']}; {report['images']} scenes x {report['samples']} samples; "
        f"difference: MRR minus {report['reference']}'s, paired, 95% bootstrap interval",
        "",
        "| model | config | calls | MRR | difference | top-1 | factor MRR (mean) | factor spread (mean) | detail | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in report["models"]:
        for row in model["rows"]:
            lo, hi = row.get("mrr_difference_ci", (None, None))
            diff = "-" if lo is None else f"{row['mrr_difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            factor_mrr = _mean([f["mrr"] for f in row["factors"].values()])
            factor_spread = _mean([f["spread"] for f in row["factors"].values()])
            lines.append(
                f"| {model['label']} | {row['config']} | {row['calls']} | {row['rank']['mrr']:.3f} | {diff} | "
                f"{row['rank']['top1']:.3f} | {factor_mrr} | {factor_spread} | {row.get('detail', float('nan')):.4f} | "
                f"{row['seconds']:.1f} |"
            )
    details = [f"{m['label']} {m['images_detail']:.4f}" for m in report["models"] if "images_detail" in m]
    if details:
        lines += ["", "detail: the samples' mean edge density (blurred samples have less); the scenes' own: " + ", ".join(details)]
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        reference = next(r for r in model["rows"] if r["config"] == report["reference"])
        ref = reference["rank"]["mrr"]
        ax.axhspan(ref - 0.02, ref + 0.02, color="#ddd", label=f"{report['reference']} ± 0.02")
        families: dict[str, list[dict]] = {}
        for row in model["rows"]:
            families.setdefault(row["family"], []).append(row)
        for name, rows in families.items():
            rows = sorted(rows, key=lambda r: r["calls"])
            ax.plot([r["calls"] for r in rows], [r["rank"]["mrr"] for r in rows], marker="o", ms=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("network calls per sample")
        ax.set_ylabel("MRR in the encoder's space")
        ax.set_title(model["label"])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(5, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.1 + 0.04 * (len(labels) // 5), 1, 1))
    fig.savefig(path, dpi=110)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo", nargs="?", help="a folder written by `rcdm demo` (its runs/ hold the models)")
    p.add_argument("--configs", type=lambda s: s.split(","), default=list(DEFAULT_CONFIGS), help="comma-separated sampler:steps[@seed offset]")
    p.add_argument("--models", type=lambda s: s.split(","), default=None, help="run folder names (default: all)")
    p.add_argument("--images", type=int, default=128, help="held-out scenes")
    p.add_argument("--samples", type=int, default=4, help="samples per scene")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default=REFERENCE, help="the configuration the others are compared with")
    p.add_argument("--json", type=Path, help="write the whole report here")
    p.add_argument("--plot", type=Path, help="draw MRR against network calls here (PNG)")
    p.add_argument("--grids", type=Path, help="write a picture per model here: the first samples under every configuration")
    p.add_argument(
        "--compare", type=lambda s: s.split(","), nargs="?", const=list(DEFAULT_FAST), default=None,
        help=f"time these configurations against the original ({REFERENCE}, float32) instead of drawing the curves "
        f"(alone: {','.join(DEFAULT_FAST)}, rcdm's default and the same in bf16)",
    )
    p.add_argument("--show", type=Path, help="print a kept report instead of measuring")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if not args.show and not args.demo:
        p.error("give a demo folder, or --show FILE")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    report = json.loads(args.show.read_text()) if args.show else run_all(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot and report.get("mode") != "compare":
        plot(report, args.plot)
    print("\n".join(compare_lines(report) if report.get("mode") == "compare" else table_lines(report)))


if __name__ == "__main__":
    main()
