"""The offline demo: the paper in miniature, end to end on a CPU in a few minutes.

It generates procedural scenes (:mod:`rcdm_cli.scenes`), trains a small RCDM on
the backbone and on the projector head of ``scenes-simclr`` (a SimCLR encoder trained
by rcdm on such scenes; with ``--full`` also on the supervised ``scenes-supervised``),
then measures on held-out scenes what each representation's samples keep: rank/MRR in
the encoder's space, every image attribute and the scenes' exact factors, and what the
samples carry of the training augmentations. The report sets the paper's findings
beside the numbers and says, from the numbers, whether each one is reproduced.

The RCDM is the ``cpu`` preset: the ``tiny`` UNet with one block per level, attention
at 8x8 only and channel multipliers 1, 1, 2 (a third fewer parameters than ``tiny``'s
1, 2, 2 and a third faster per step on a CPU, at the same faithfulness on these
scenes), predicting the image rather than the noise, with a fixed variance: at this
budget a noise predictor or a learned variance stays at chance (measured on the
thumbnail demo that preceded this one).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rcdm_cli import __version__
from rcdm_cli.demo import report as page
from rcdm_cli.demo.figures import side_by_side, strips
from rcdm_cli.demo.findings import assess
from rcdm_cli.demo.narrative import report_blocks
from rcdm_cli.scenes import make_scenes
from rcdm_cli.encoders import get_registry
from rcdm_cli.errors import Interrupted, UsageError
from rcdm_cli.evaluation.attributes import measure_attributes, select_attributes
from rcdm_cli.evaluation.charts import save_attribute_chart
from rcdm_cli.evaluation.rank import ranks, summarize
from rcdm_cli.fileio import write_json
from rcdm_cli.imaging import save_png, to_pil
from rcdm_cli.pipeline.representations import interpolate
from rcdm_cli.pipeline.runner import RCDMRun
from rcdm_cli.pipeline.sampling import SamplingOptions

# What the demo writes into its folder (and all that --overwrite removes). The marker
# is written first: files of these names without it are not the demo's. ``run`` is
# where earlier versions of the demo kept their one model.
MARKER = ".rcdm-demo"
OUTPUTS = (
    MARKER, "data", "run", "runs", "samples.png", "augmented.png", "interpolation.png", "attributes.png", "report.html",
    "demo.json",
)

# progress(task, done, total): how far a long phase is
Progress = Callable[[str, int, int], None]

# The demo's model: a UNet and a diffusion that learn quickly on a CPU (see the docstring).
DEMO_PRESET = "cpu"


@dataclass(frozen=True)
class Representation:
    role: str  # what the findings call it: backbone, head, supervised
    encoder: str
    layer: str

    @property
    def label(self) -> str:
        return f"{self.encoder}/{self.layer}"


SSL = (Representation("backbone", "scenes-simclr", "backbone"), Representation("head", "scenes-simclr", "head"))
SUPERVISED = Representation("supervised", "scenes-supervised", "backbone")


@dataclass
class DemoSettings:
    out: Path
    representations: tuple[Representation, ...] = SSL
    train_images: int = 1000
    heldout_images: int = 32
    steps: int = 1000
    batch_size: int = 16
    samples: int = 4
    augmentations: tuple[str, ...] = ("grayscale", "crop-0.5")
    seed: int = 0
    sampler: str = "dpm++2m"
    sampling_steps: str = "20"
    checkpoint: str | None = None  # a released model instead of training (--released)
    lr: float = 2e-3
    ema: float = 0.98
    grid_rows: int = 8
    interpolation_frames: int = 8

    @classmethod
    def full(cls, out: Path, **overrides) -> "DemoSettings":
        """Tighter numbers for a longer run: the supervised baseline too, more steps,
        more held-out scenes, every augmentation the findings and the paper use."""
        base = {
            "representations": (*SSL, SUPERVISED), "steps": 4000, "heldout_images": 64, "train_images": 2000,
            "augmentations": ("grayscale", "crop-0.5", "color-jitter", "hflip", "vshift"),
        }
        return cls(out=out, **{**base, **overrides})


def holds_demo(out: Path) -> bool:
    """Whether ``out`` holds a demo, finished or not (files of the demo's names alone
    do not make one)."""
    return (out / MARKER).exists() or (out / "demo.json").exists()


def clear_outputs(out: Path) -> None:
    """Remove what a demo wrote into ``out`` (and nothing else there)."""
    for name in OUTPUTS:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _claim(out: Path, seed: int, event: Callable[[str], None]) -> None:
    """A finished demo (its ``demo.json`` written last) is kept unless the caller
    clears it; an unfinished one (interrupted, or a failed download), known by the
    marker written first, holds only generated files and is replaced. Files of the
    demo's names without the marker are someone else's and are never touched."""
    if (out / "demo.json").exists():
        raise UsageError(f"{out} already holds a demo; choose another --out or pass --overwrite")
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and MARKER not in present:
        raise UsageError(f"{out / present[0]} exists and was not written by a demo; choose another --out")
    if present:
        event(f"replacing the unfinished demo in {out}")
        clear_outputs(out)
    write_json(out / MARKER, {"rcdm_version": __version__, "seed": seed})


def _write_scenes(folder: Path, scenes) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, _) in enumerate(scenes):
        path = folder / f"scene-{i:04d}.png"
        save_png(image, path)
        paths.append(path)
    return paths


def _train(
    settings: DemoSettings, rep: Representation, data: Path, out: Path, device, event, progress: Progress
) -> dict:
    """One small RCDM on ``rep``; a run stopped by a signal stops the demo (its report
    must describe models that finished)."""
    from rcdm_cli.training.config import TrainConfig
    from rcdm_cli.training.loop import Trainer
    from rcdm_cli.training.reporting import Reporter

    class _Events(Reporter):
        def event(self, message: str) -> None:
            event(f"{rep.label}: {message}")

        def log(self, record: dict) -> None:
            event(f"{rep.label}: step {record['step']}/{settings.steps}, loss {record['loss']:.4f}")

        def step(self, step: int, total: int, loss: float, images_per_second: float) -> None:
            progress(f"training {rep.label}", step, total)

        def progress(self, task: str, done: int, total: int) -> None:
            progress(f"{rep.label}: {task}", done, total)

    config = TrainConfig(
        data=str(data), out=str(out), encoder=rep.encoder, layer=rep.layer, preprocessing="native", preset=DEMO_PRESET,
        batch_size=settings.batch_size, lr=settings.lr, ema=[settings.ema], steps=settings.steps,
        save_every=settings.steps, log_every=max(1, settings.steps // 5), sample_every=10 * settings.steps,
        seed=settings.seed, workers=0, cache_features=True,
    )
    started = time.perf_counter()
    summary = Trainer(config, device, reporter=_Events()).run()
    if summary.stopped_by_signal:
        raise Interrupted(f"stopped while training the {rep.label} model (step {summary.step} of {settings.steps}); no report written")
    return {"checkpoint": str(out), "steps": summary.step, "train_seconds": round(time.perf_counter() - started, 1)}


def _measure(run: RCDMRun, pictures, specs, settings: DemoSettings, event, progress: Progress, label: str) -> dict:
    """Everything the report shows of one model, from one set of samples."""
    # 32 images per network call: faster than 64 or 128 on a 2-core CPU (caches)
    options = SamplingOptions(sampler=settings.sampler, steps=settings.sampling_steps, seed=settings.seed, batch_size=32)
    reps = run.encode(pictures)

    def sample(reps, count, opts):  # each call (the scenes, then each augmentation's views) gets its own bar
        task = f"{label}: sampling {reps.shape[0] * count} images"
        return run.sample(
            reps, count, opts,
            progress=lambda p: progress(task, (p.batch - 1) * p.steps + p.step, p.batches * p.steps),
        )

    measured = measure_attributes(
        run, pictures, specs, settings.samples, options, augmentations=settings.augmentations,
        encode=lambda images: run.encode(images), sample=sample, event=event,
    )
    samples = measured.samples
    flat = [to_pil(s) for s in samples.reshape(-1, *samples.shape[2:])]
    rank = summarize(ranks(run.encode(flat).reshape(len(pictures), settings.samples, -1), reps))
    path = interpolate(reps[0], reps[1], settings.interpolation_frames, "slerp")
    frames = run.sample(path, 1, options, same_noise=True).samples[:, 0]
    return {
        "measured": measured, "frames": frames, "rank": rank,
        "network_calls": measured.network_calls + run.check(None, 1, options).num_timesteps,
    }


def run_demo(
    settings: DemoSettings,
    device: torch.device,
    event: Callable[[str], None] = lambda m: None,
    progress: Progress = lambda task, done, total: None,
) -> dict:
    """``event`` receives a line per phase; ``progress(task, done, total)`` the work
    within the long ones (each model's training steps, its feature cache, its
    sampling), for a bar."""
    out = settings.out
    _claim(out, settings.seed, event)
    started = time.perf_counter()
    scenes = make_scenes(settings.train_images + settings.heldout_images, seed=settings.seed)
    train_scenes, heldout_scenes = scenes[: settings.train_images], scenes[settings.train_images :]
    data = out / "data"
    _write_scenes(data / "train", train_scenes)
    heldout_paths = _write_scenes(data / "heldout", heldout_scenes)
    write_json(data / "scenes.json", {
        "train": [f for _, f in train_scenes], "heldout": [f for _, f in heldout_scenes], "seed": settings.seed,
    })
    event(f"generated {len(scenes)} scenes in {data}")

    if settings.checkpoint is not None:
        models = {"released": {"checkpoint": settings.checkpoint, "steps": None, "train_seconds": 0.0}}
    else:
        models = {
            rep.role: _train(settings, rep, data / "train", out / "runs" / rep.role, device, event, progress)
            for rep in settings.representations
        }

    from rcdm_cli.inputs import load_image

    pictures = [load_image(p) for p in heldout_paths]
    specs = select_attributes(["image", "scene"])
    results, records = {}, {}
    for role, model in models.items():
        run = RCDMRun.prepare(checkpoint=model["checkpoint"], device=device)
        label = f"{get_registry().display_name(run.plan.encoder)}/{run.plan.layer}"
        event(f"{label}: sampling {settings.samples} images for each of {len(pictures)} held-out scenes")
        results[role] = _measure(run, pictures, specs, settings, event, progress, label)
        measured = results[role]["measured"]
        records[role] = {
            "role": role, "label": label, "encoder": run.plan.encoder, "layer": run.plan.layer, **model,
            "images": len(pictures), "samples_per_image": int(measured.samples.shape[1]),
            "rank": results[role]["rank"], "attributes": measured.scores, "augmentations": measured.augmentations,
            "network_calls": results[role]["network_calls"],
        }
    return _write_outputs(settings, out, data, pictures, results, records, started)


def _write_outputs(settings, out: Path, data: Path, pictures, results: dict, records: dict, started: float) -> dict:
    """The pictures, the report and, last, ``demo.json``: written only once every
    model has finished, so that they describe what ran."""
    roles = list(records)
    first = results[roles[0]]["measured"]
    samples_png, strip_png, augmented_png, chart_png = (
        out / "samples.png", out / "interpolation.png", out / "augmented.png", out / "attributes.png",
    )
    # the grids' labels are short (a tile's width): the role, which the report maps to the representation
    save_png(side_by_side(first.cond_images, [results[r]["measured"].samples for r in roles], roles, settings.grid_rows), samples_png)
    save_png(strips((first.cond_images[0], first.cond_images[1]), [results[r]["frames"] for r in roles], roles), strip_png)
    pictures_written = {"samples": samples_png, "interpolation": strip_png}
    if settings.augmentations:
        name = settings.augmentations[0]
        views = first.augmented_views[name]
        save_png(side_by_side(views, [results[r]["measured"].augmented_samples[name] for r in roles], roles, settings.grid_rows), augmented_png)
        pictures_written["augmented"] = augmented_png
    save_attribute_chart(chart_png, list(records.values()), title="What the samples keep, per representation")
    pictures_written["attributes"] = chart_png
    findings = assess(records)
    seconds = round(time.perf_counter() - started, 1)
    report = out / "report.html"
    page.write_report(report, "rcdm demo: what a representation keeps", report_blocks(settings, data, records, findings, pictures_written, seconds))
    result = {
        "report": str(report), **{k: str(v) for k, v in pictures_written.items()},
        "data": str(data), "factors": str(data / "scenes.json"), "summary": str(out / "demo.json"),
        "representations": list(records.values()), "findings": findings,
        "settings": {
            "train_images": settings.train_images, "heldout_images": len(pictures), "steps": settings.steps,
            "samples": settings.samples, "sampler": settings.sampler, "sampling_steps": settings.sampling_steps,
            "augmentations": list(settings.augmentations), "seed": settings.seed,
        },
        "seconds": seconds,
    }
    write_json(out / "demo.json", result)
    return result

