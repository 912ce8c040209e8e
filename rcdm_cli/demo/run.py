"""The offline demo, end to end on a CPU in a few minutes: generate scenes, train a
small RCDM on the ``thumbnail`` representation (each scene averaged onto a 4x4 grid:
colour and layout, no shape), then sample, interpolate and measure rank/MRR on
held-out scenes, and write a report.

The choices are measured ones (2 CPU cores, 500 steps, 8 held-out scenes):

- the encoder: the thumbnail needs no download, and what it keeps is known exactly,
  so the report can say what the samples should share. An untrained ResNet-50 (the
  ``random`` encoder) maps every scene to nearly the same direction (cosine 0.995
  between scenes), and at this budget RCDM on it stayed at chance;
- the model: the ``tiny`` UNet with one block per level and attention at 8x8 only,
  predicting the image rather than the noise, with a fixed variance. A noise
  predictor (MRR at chance, colours drifting) or a learned variance (the variational
  term's noise kept it at chance too) needs far longer training. These settings
  reached an MRR of 0.97 (chance 0.34) in about 2.5 minutes of training.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rcdm_cli import __version__
from rcdm_cli.demo.report import write_report
from rcdm_cli.demo.scenes import make_scenes
from rcdm_cli.diffusion.config import PRESETS, DiffusionConfig, to_official_flags
from rcdm_cli.encoders import EncoderName
from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.rank import ranks, summarize
from rcdm_cli.fileio import write_json
from rcdm_cli.imaging import make_grid, save_png, to_pil
from rcdm_cli.pipeline.representations import interpolate
from rcdm_cli.pipeline.runner import RCDMRun
from rcdm_cli.pipeline.sampling import SamplingOptions
from rcdm_cli.preprocessing import diffusion_target


# What the report says a representation keeps, so that the pictures can be checked.
ENCODER_NOTES = {
    "thumbnail": (
        "Here the representation is the scene averaged onto a 4x4 grid (the <code>thumbnail</code> encoder): it keeps "
        "the colours and where they are, and nothing finer. The samples of a row should therefore agree on the "
        "background and on the colour, position and size of the shape, and are free to get the shape itself wrong. "
    ),
    "dino": (
        "Here the representation is the released DINO ResNet-50's projection head, which, as the paper shows, keeps "
        "mostly what the object is: its pose, the background and the colours vary between samples. "
    ),
}

# What the demo writes into its folder (and all that --overwrite removes). The marker
# is written first: files of these names without it are not the demo's.
MARKER = ".rcdm-demo"
OUTPUTS = (MARKER, "data", "run", "samples.png", "interpolation.png", "report.html", "demo.json")


# The demo's model, as guided-diffusion flags: the tiny preset's UNet, lighter, and a
# diffusion that learns quickly (x0 prediction, fixed variance); see the docstring.
DEMO_UNET = dataclasses.replace(PRESETS["tiny"].unet, num_res_blocks=1, attention_resolutions=(8,), learn_sigma=False)
DEMO_DIFFUSION = DiffusionConfig(learn_sigma=False, predict_xstart=True)
DEMO_FLAGS = to_official_flags(DEMO_UNET, DEMO_DIFFUSION)


@dataclass
class DemoSettings:
    out: Path
    train_images: int = 96
    heldout_images: int = 8
    steps: int = 500
    batch_size: int = 16
    samples: int = 4
    seed: int = 0
    sampler: str = "dpm++2m"
    sampling_steps: str = "25"
    checkpoint: str | None = None  # a released model instead of training (--released)
    encoder: str = "thumbnail"
    layer: str = "backbone"
    lr: float = 2e-3
    ema: float = 0.98


def _write_scenes(folder: Path, scenes) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, _) in enumerate(scenes):
        path = folder / f"scene-{i:04d}.png"
        save_png(image, path)
        paths.append(path)
    return paths


def holds_demo(out: Path) -> bool:
    """Whether ``out`` holds a demo, finished or not (files of the demo's names alone
    do not make one)."""
    return (out / MARKER).exists() or (out / "demo.json").exists()


def clear_outputs(out: Path) -> None:
    """Remove what a demo wrote into ``out`` (and nothing else there)."""
    import shutil

    for name in OUTPUTS:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def run_demo(settings: DemoSettings, device: torch.device, event: Callable[[str], None] = lambda m: None) -> dict:
    """A finished demo (its ``demo.json`` written last) is kept unless the caller
    clears it; an unfinished one (interrupted, or a failed download), known by the
    marker written first, holds only generated files and is replaced. Files of the
    demo's names without the marker are someone else's and are never touched."""
    out = settings.out
    if (out / "demo.json").exists():
        raise UsageError(f"{out} already holds a demo; choose another --out or pass --overwrite")
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and MARKER not in present:
        raise UsageError(f"{out / present[0]} exists and was not written by a demo; choose another --out")
    if present:
        event(f"replacing the unfinished demo in {out}")
        clear_outputs(out)
    write_json(out / MARKER, {"rcdm_version": __version__, "seed": settings.seed})
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

    checkpoint = settings.checkpoint
    train_seconds = 0.0
    if checkpoint is None:
        from rcdm_cli.training.config import TrainConfig
        from rcdm_cli.training.loop import Reporter, Trainer

        class _Events(Reporter):
            def event(self, message: str) -> None:
                event(message)

            def log(self, record: dict) -> None:
                event(f"step {record['step']}/{settings.steps}: loss {record['loss']:.4f}")

        config = TrainConfig(
            data=str(data / "train"), out=str(out / "run"), encoder=settings.encoder, layer=settings.layer,
            preset=None, flags=DEMO_FLAGS, batch_size=settings.batch_size, lr=settings.lr, ema=[settings.ema], steps=settings.steps,
            save_every=settings.steps, log_every=max(1, settings.steps // 6), sample_every=10 * settings.steps,
            seed=settings.seed, workers=0, cache_features=True,
        )
        t0 = time.perf_counter()
        Trainer(config, device, reporter=_Events()).run()
        train_seconds = time.perf_counter() - t0
        checkpoint = str(out / "run")

    run = RCDMRun.prepare(checkpoint=checkpoint, device=device)
    options = SamplingOptions(sampler=settings.sampler, steps=settings.sampling_steps, seed=settings.seed, batch_size=32)
    from rcdm_cli.inputs import load_image

    pictures = [load_image(p) for p in heldout_paths]
    reps = run.encode(pictures)
    event(f"sampling {settings.samples} images for each of {len(pictures)} held-out scenes")
    samples = run.sample(reps, settings.samples, options).samples
    shown = [to_pil(diffusion_target(im, run.meta.image_size)) for im in pictures]
    tiles, labels = [], []
    for j, cond in enumerate(shown):
        tiles.append(cond)
        labels.append("input")
        tiles += [to_pil(samples[j, k]) for k in range(settings.samples)]
        labels += [f"#{k}" for k in range(settings.samples)]
    samples_png = out / "samples.png"
    save_png(make_grid(tiles, labels, columns=settings.samples + 1), samples_png)

    event("interpolating between two held-out scenes")
    path_reps = interpolate(reps[0], reps[1], 8, "slerp")
    frames = run.sample(path_reps, 1, options, same_noise=True).samples[:, 0]
    strip_png = out / "interpolation.png"
    save_png(make_grid([shown[0], *[to_pil(f) for f in frames], shown[1]], ["A", *[f"{t:.2f}" for t in torch.linspace(0, 1, 8).tolist()], "B"], columns=10), strip_png)

    event("measuring rank and MRR of the held-out scenes")
    flat = [to_pil(s) for s in samples.reshape(-1, *samples.shape[2:])]
    sample_reps = run.encode(flat).reshape(len(pictures), settings.samples, -1)
    summary = summarize(ranks(sample_reps, reps))
    numbers = {
        "model": checkpoint,
        "encoder": f"{run.plan.encoder}/{run.plan.layer}",
        "training steps": settings.steps if settings.checkpoint is None else "released",
        "mean rank (chance)": f"{summary['mean_rank']:.2f} ({summary['chance_mean_rank']:.2f})",
        "MRR (chance)": f"{summary['mrr']:.3f} ({summary['chance_mrr']:.3f})",
        "top-1": summary["top1"],
        "held-out scenes": len(pictures),
        "samples per scene": settings.samples,
        "seconds": f"{time.perf_counter() - started:.0f}",
    }
    report = out / "report.html"
    write_report(
        report,
        title="rcdm demo: what a representation keeps",
        intro=(
            "Each row shows a held-out scene (left) and images an RCDM drew from that scene's representation. "
            "What stays the same across a row is what the representation encodes; what varies is what it discards. "
            + ENCODER_NOTES.get(EncoderName.parse(run.plan.encoder).base, "")
            + f"Scenes and their factors (shape, colour, size, position, background) are in <code>{data}</code>. "
            "The rank of a scene among the held-out ones, by the similarity of its samples' representations to theirs, "
            "measures how faithful the samples are (1 is perfect)."
        ),
        sections=[
            {"title": "Samples from held-out scenes", "images": [samples_png]},
            {"title": "Interpolation", "text": "From scene A to scene B in representation space (slerp), with the same noise in every frame.", "images": [strip_png]},
        ],
        numbers=numbers,
    )
    result = {
        "report": str(report), "samples": str(samples_png), "interpolation": str(strip_png),
        "data": str(data), "factors": str(data / "scenes.json"), "summary": str(out / "demo.json"),
        "checkpoint": checkpoint, "rank": summary, "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "demo.json", result)
    return result
