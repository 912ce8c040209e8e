"""Cheaper RCDMs, measured on the demo's scenes: warm starts, short runs, guidance.

    python bench/cheap_rcdms.py warm-start  --out bench-cheap   # about 15 min on 2 cores
    python bench/cheap_rcdms.py short-runs  --out bench-cheap   # about 4 min
    python bench/cheap_rcdms.py guidance    --out bench-cheap   # about 4 min
    python bench/cheap_rcdms.py phase-speed --presets cpu,rcdm-64,rcdm-128   # seconds per step

Every model is the ``cpu`` preset trained on the same procedural scenes (``rcdm demo``'s
generator); every number is measured on held-out scenes with the same samples' noise:
MRR in the conditioning encoder's space (`evaluate rank`), the model's conditioning
effect (grey levels by which its image changes between representations), the
samples' diversity (mean pixel distance between two samples of one scene, in grey
levels) and, for guidance, each scene factor's MRR and spread (`evaluate attributes`).

- ``warm-start``: an RCDM for representation B trained from scratch, against one
  started (``--init``) from an RCDM trained on representation A, with and without a
  conditioning-only phase: MRR at each checkpoint, CPU seconds per step, and the steps
  each needs to reach what scratch reaches at the end.
- ``short-runs``: a short run with the default EMA rate (0.9999), with and without
  warm-up, sampled with the EMA and with the raw weights.
- ``guidance``: a model trained with ``--cond-drop`` sampled at several W.
- ``phase-speed``: seconds per training step (forward, backward, AdamW) of each
  preset with every layer learning, and in the conditioning-only phase (projection;
  embeddings), random weights, steps taken in turns so that load affects all alike.

``--json FILE`` keeps everything; tables go to stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rcdm_cli.demo.run import _write_scenes
from rcdm_cli.scenes import make_scenes
from rcdm_cli.evaluation.attributes import attribute_values, conditioning_views, sample_views, score_attribute, select_attributes
from rcdm_cli.evaluation.rank import ranks, summarize
from rcdm_cli.imaging import to_pil
from rcdm_cli.inputs import load_image
from rcdm_cli.pipeline.diagnostics import conditioning_effect
from rcdm_cli.pipeline.runner import RCDMRun
from rcdm_cli.pipeline.sampling import SamplingOptions
from rcdm_cli.training.config import TrainConfig
from rcdm_cli.training.loop import Trainer
from rcdm_cli.training.reporting import Reporter

CPU = torch.device("cpu")
SOURCE = ("scenes-simclr", "backbone")
# B with another width (the projection starts afresh) and with the same width (kept)
TARGETS = {"head": ("scenes-simclr", "head"), "supervised": ("scenes-supervised", "backbone")}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Quiet(Reporter):
    """The runs' own messages are left out: the tables say what was measured."""


def scenes(out: Path, train: int, heldout: int, seed: int) -> tuple[Path, list]:
    data = out / "data"
    made = make_scenes(train + heldout, seed=seed)
    if not (data / "train").is_dir():
        _write_scenes(data / "train", made[:train])
        _write_scenes(data / "heldout", made[train:])
    pictures = [load_image(p) for p in sorted((data / "heldout").glob("*.png"))]
    return data / "train", pictures


def train(data: Path, out: Path, encoder: tuple[str, str], steps: int, save_every: int, **extra) -> dict:
    """One run of the cpu preset (the demo's recipe and learning rate), or the run
    already in ``out`` when it finished; its images per second from its metrics."""
    if not (out / "checkpoints" / f"step-{steps:07d}" / "model.safetensors").exists():
        config = TrainConfig(
            data=str(data), out=str(out), encoder=encoder[0], layer=encoder[1], preprocessing="native", preset="cpu",
            batch_size=16, lr=2e-3, steps=steps, save_every=save_every, keep=10_000, log_every=save_every,
            sample_every=10 * steps, workers=0, cache_features=True, **extra,
        )
        started = time.perf_counter()
        Trainer(config, CPU, reporter=_Quiet(), overwrite=True).run()
        log(f"trained {out.name}: {steps} steps in {time.perf_counter() - started:.0f} s")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"run": str(out), "img_per_s": float(np.mean([m["img_per_s"] for m in metrics]))}


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = sorted((int(p.name.split("-")[1]), p / "model.safetensors") for p in (run / "checkpoints").glob("step-*"))
    return [(step, path) for step, path in found if path.exists()]


def measure(checkpoint: Path, pictures, samples: int, *, weight_set=None, guidance=1.0, factors=False, seed=1) -> dict:
    run = RCDMRun.prepare(checkpoint=str(checkpoint), device=CPU, weight_set=weight_set)
    reps = run.encode(pictures)
    options = SamplingOptions(seed=seed, batch_size=32, guidance=guidance)
    drawn = run.sample(reps, samples, options).samples
    flat = [to_pil(s) for s in drawn.reshape(-1, *drawn.shape[2:])]
    table = ranks(run.encode(flat).reshape(len(pictures), samples, -1), reps)
    pairs = [(a, b) for a in range(samples) for b in range(a + 1, samples)]
    diversity = float(torch.stack([(drawn[:, a] - drawn[:, b]).abs().mean() for a, b in pairs]).mean()) * 127.5
    result = {
        "mrr": summarize(table)["mrr"], "chance_mrr": summarize(table)["chance_mrr"],
        "effect": conditioning_effect(run.model, reps, guidance=guidance), "diversity": diversity,
    }
    if factors:
        cond = conditioning_views(pictures, run.meta.image_size)
        images = sample_views(drawn)
        result["factors"] = {}
        for spec in select_attributes(["scene"]):
            values = attribute_values(spec, images).reshape(len(pictures), samples, -1)
            score = score_attribute(spec, attribute_values(spec, cond), values, seed)
            result["factors"][spec.name] = {"mrr": score["mrr"], "spread": score["spread"]}
    return result


def curve(run: Path, pictures, samples: int, every: int, last: int) -> list[dict]:
    rows = []
    for step, path in checkpoints(run):
        if step % every or step > last:
            continue
        rows.append({"step": step, **measure(path, pictures, samples)})
        log(f"  {run.name} step {step}: MRR {rows[-1]['mrr']:.3f}")
    return rows


def steps_to(rows: list[dict], target: float) -> int | None:
    for row in rows:
        if row["mrr"] >= target:
            return row["step"]
    return None


def warm_start(args) -> dict:
    data, pictures = scenes(args.out, args.train_images, args.heldout, args.seed)
    every = args.every
    parent = train(data, args.out / "parent", SOURCE, args.parent_steps, args.parent_steps)
    parent_mrr = measure(Path(parent["run"]), pictures, args.samples)["mrr"]
    log(f"parent {SOURCE[0]}/{SOURCE[1]}: MRR {parent_mrr:.3f}")
    variants = {
        "scratch": {},
        "init": {"init": parent["run"]},
        f"init + {args.phase} conditioning-only": {"init": parent["run"], "conditioning_only": args.phase},
    }
    if args.embeddings:
        variants[f"init + {args.phase} conditioning-only (embeddings)"] = {
            "init": parent["run"], "conditioning_only": args.phase, "conditioning_layers": "embeddings",
        }
    report = {
        "parent": {**parent, "encoder": "/".join(SOURCE), "mrr": parent_mrr, "steps": args.parent_steps}, "targets": {},
    }
    for name, encoder in TARGETS.items():
        target = {"encoder": "/".join(encoder), "variants": {}}
        for label, extra in variants.items():
            slug = label.replace(' ', '_').replace('(', '').replace(')', '').replace('+', 'plus')
            folder = args.out / f"{name}-{slug}-{args.steps}"
            trained = train(data, folder, encoder, args.steps, every, **extra)
            target["variants"][label] = {**trained, "curve": curve(folder, pictures, args.samples, every, args.steps)}
        final = target["variants"]["scratch"]["curve"][-1]["mrr"]
        target["scratch_final_mrr"] = final
        for label, variant in target["variants"].items():
            reached = steps_to(variant["curve"], final - args.tolerance)
            variant["steps_to_scratch_final"] = reached
        report["targets"][name] = target
    return report


def warm_start_lines(report: dict, args) -> list[str]:
    lines = [f"parent: {report['parent']['encoder']}, MRR {report['parent']['mrr']:.3f}"]
    for name, target in report["targets"].items():
        steps = [row["step"] for row in next(iter(target["variants"].values()))["curve"]]
        lines.append("")
        lines.append(f"target {target['encoder']}: MRR by training step (scratch ends at {target['scratch_final_mrr']:.3f})")
        lines.append(f"{'variant':<44}" + "".join(f"{s:>7}" for s in steps) + f"{'img/s':>8}{'steps to':>10}")
        for label, variant in target["variants"].items():
            reached = variant["steps_to_scratch_final"]
            lines.append(
                f"{label:<44}" + "".join(f"{row['mrr']:>7.3f}" for row in variant["curve"])
                + f"{variant['img_per_s']:>8.1f}{(str(reached) if reached else '-'):>10}"
            )
    lines.append(f"(steps to: the first checkpoint within {args.tolerance} of scratch's final MRR)")
    return lines


def short_runs(args) -> dict:
    data, pictures = scenes(args.out, args.train_images, args.heldout, args.seed)
    report = {}
    for warmup in (False, True):
        label = "warm-up" if warmup else "no warm-up"
        folder = args.out / f"short-{'warmup' if warmup else 'plain'}-{args.short_steps[-1]}"
        trained = train(data, folder, TARGETS["head"], args.short_steps[-1], 20, ema=[0.9999], ema_warmup=warmup)
        rows = []
        for step, path in checkpoints(Path(trained["run"])):
            if step not in args.short_steps:
                continue
            for weights in ("ema", "model"):
                rows.append({"step": step, "weights": weights, **measure(path, pictures, args.samples, weight_set=weights)})
                log(f"  {label} step {step} {weights}: MRR {rows[-1]['mrr']:.3f}, effect {rows[-1]['effect']:.2f}")
        report[label] = rows
    return report


def short_run_lines(report: dict) -> list[str]:
    lines = [f"{'EMA 0.9999':<12}{'step':>6}{'weights':>9}{'MRR':>8}{'effect':>9}{'diversity':>11}"]
    for label, rows in report.items():
        for row in rows:
            lines.append(f"{label:<12}{row['step']:>6}{row['weights']:>9}{row['mrr']:>8.3f}{row['effect']:>9.2f}{row['diversity']:>11.1f}")
    return lines


def guidance(args) -> dict:
    data, pictures = scenes(args.out, args.train_images, args.heldout, args.seed)
    encoder = TARGETS[args.guidance_target]
    # the same run as warm-start's scratch model of this target (reused when it is there)
    plain = train(data, args.out / f"{args.guidance_target}-scratch-{args.steps}", encoder, args.steps, args.every)
    dropped = train(
        data, args.out / f"guidance-drop-{args.guidance_target}-{args.steps}", encoder, args.steps, args.steps,
        cond_drop=args.cond_drop,
    )
    rows = [{"model": "no --cond-drop", "w": 1.0, **measure(Path(plain["run"]), pictures, args.samples, factors=True)}]
    for w in args.weights:
        rows.append({"model": f"--cond-drop {args.cond_drop:g}", "w": w,
                     **measure(Path(dropped["run"]), pictures, args.samples, guidance=w, factors=True)})
        log(f"  W={w:g}: MRR {rows[-1]['mrr']:.3f}, diversity {rows[-1]['diversity']:.1f}")
    return {"encoder": "/".join(encoder), "rows": rows}


def guidance_lines(report: dict) -> list[str]:
    factors = list(report["rows"][0]["factors"])
    lines = [f"{report['encoder']}: MRR, diversity (grey levels) and each factor's spread"]
    lines.append(f"{'model':<18}{'W':>5}{'MRR':>7}{'div.':>7}" + "".join(f"{f[:10]:>11}" for f in factors))
    for row in report["rows"]:
        lines.append(
            f"{row['model']:<18}{row['w']:>5g}{row['mrr']:>7.3f}{row['diversity']:>7.1f}"
            + "".join(_number(row["factors"][f]["spread"], 11) for f in factors)
        )
    return lines


def _number(value, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.2f}"


def phase_speed(args) -> dict:
    from rcdm_cli.diffusion import PRESETS, GaussianDiffusion, UNet
    from rcdm_cli.training.warmstart import conditioning_path, set_trainable

    report = {}
    for preset_name in args.presets:
        preset = PRESETS[preset_name]
        torch.manual_seed(0)
        unet = UNet(preset.unet.with_rep_dim(2048))
        diffusion = GaussianDiffusion.from_config(preset.diffusion)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=True)
        size, batch = preset.unet.image_size, args.phase_batch.get(preset_name, 2)
        x = torch.randn(batch, 3, size, size)
        reps = torch.randn(batch, 2048)
        t = torch.randint(0, diffusion.num_timesteps, (batch,))
        phases = {"every layer": None, "projection": conditioning_path(unet, "projection"),
                  "embeddings": conditioning_path(unet, "embeddings")}
        times = {name: [] for name in phases}
        for round_ in range(args.phase_rounds + 1):
            for name, names in phases.items():
                set_trainable(unet, names)
                started = time.perf_counter()
                loss = diffusion.training_losses(lambda a, b: unet(a, b, reps), x, t)["loss"].mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if round_:  # the first round warms up
                    times[name].append(time.perf_counter() - started)
        trainable = {name: sum(p.numel() for n, p in unet.named_parameters() if names is None or n in names)
                     for name, names in phases.items()}
        report[preset_name] = {
            "batch": batch, **{name: {"seconds": float(np.median(v)), "parameters": trainable[name]} for name, v in times.items()},
        }
        log(f"{preset_name}: " + ", ".join(f"{n} {float(np.median(v)):.3f} s" for n, v in times.items()))
    return report


def phase_speed_lines(report: dict) -> list[str]:
    lines = [f"{'preset':<10}{'batch':>6}{'every layer':>13}{'projection':>13}{'embeddings':>13}   learning parameters"]
    for name, row in report.items():
        full = row["every layer"]["seconds"]
        cells = "".join(
            f"{row[p]['seconds']:>8.3f} s" + (f" {row[p]['seconds'] / full:>3.0%}" if p != "every layer" else "    ")
            for p in ("every layer", "projection", "embeddings")
        )
        counts = " / ".join(f"{row[p]['parameters'] / 1e6:.2f} M" for p in ("every layer", "projection", "embeddings"))
        lines.append(f"{name:<10}{row['batch']:>6}{cells}   {counts}")
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=("warm-start", "short-runs", "guidance", "phase-speed"))
    parser.add_argument("--out", type=Path, default=Path("bench-cheap"), help="Folder for the scenes and the runs.")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=400, help="Training steps of each measured run.")
    parser.add_argument("--every", type=int, default=50, help="Checkpoints measured every this many steps.")
    parser.add_argument("--parent-steps", type=int, default=1000, help="Training steps of the warm start's parent.")
    parser.add_argument("--phase", type=int, default=50, help="Conditioning-only steps in the warm start.")
    parser.add_argument("--embeddings", action="store_true", help="Also a conditioning-only phase that trains every embedding layer.")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--short-steps", type=int, nargs="+", default=[60, 200, 400])
    parser.add_argument("--guidance-target", choices=tuple(TARGETS), default="head")
    parser.add_argument("--cond-drop", type=float, default=0.1)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 3.0, 5.0])
    parser.add_argument("--presets", type=lambda v: v.split(","), default=["cpu", "rcdm-64", "rcdm-128"])
    parser.add_argument("--phase-batch", type=lambda v: dict((k, int(n)) for k, n in (p.split("=") for p in v.split(","))),
                        default={"cpu": 16, "rcdm-64": 2, "rcdm-128": 1}, help="preset=batch,...")
    parser.add_argument("--phase-rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    experiments = {
        "warm-start": (warm_start, lambda r: warm_start_lines(r, args)),
        "short-runs": (short_runs, short_run_lines),
        "guidance": (guidance, guidance_lines),
        "phase-speed": (phase_speed, phase_speed_lines),
    }
    run, lines = experiments[args.experiment]
    started = time.perf_counter()
    report = run(args)
    print("\n".join(lines(report)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "experiment": args.experiment, "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - started, 1),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "report": report,
        }, indent=1))


if __name__ == "__main__":
    main()
