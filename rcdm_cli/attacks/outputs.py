"""The files of the adversarial experiment: for each image, the clean and the
adversarial picture (exactly the tensors attacked and encoded), the perturbation,
the tensors, and a grid of RCDM's samples from both representations; with several
images, an overview of every grid; and the manifest.

Paths are planned before the attack, so that an existing file is refused (without
``--overwrite``) before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rcdm_cli import __version__
from rcdm_cli.attacks.experiment import AttackOutcome, AttackPlan, to_8bit
from rcdm_cli.imaging import make_grid, save_png, to_pil
from rcdm_cli.tensorfile import save_tensors

FILES = ("clean", "adversarial", "perturbation", "grid")


@dataclass
class AttackLayout:
    out: Path
    names: list[str]

    def files(self, name: str) -> dict[str, Path]:
        return {k: self.out / name / f"{k}.png" for k in FILES} | {"tensors": self.out / name / "tensors.safetensors"}

    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.json"

    @property
    def overview_path(self) -> Path | None:
        return self.out / "overview.png" if len(self.names) > 1 else None

    def planned(self) -> list[Path]:
        paths = [f for name in self.names for f in self.files(name).values()] + [self.manifest_path]
        return paths + ([self.overview_path] if self.overview_path else [])


def picture(x: torch.Tensor) -> Image.Image:
    """A [0, 1] tensor on the 8-bit grid as the image file holding exactly it."""
    arr = to_8bit(x.detach().cpu()).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, mode="RGB")


def classify_samples(enc, classifier, samples: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The classifier's labels of RCDM samples (images x n), seen as images again
    (resized to the encoder's input like any picture), flattened."""
    flat = samples.reshape(-1, *samples.shape[2:])
    preds = [
        classifier.predict(enc.prepare([to_pil(s) for s in flat[i : i + batch_size]]), batch_size).cpu()
        for i in range(0, len(flat), batch_size)
    ]
    return torch.cat(preds)


def write_images(
    layout: AttackLayout,
    paths: list[Path],
    outcome: AttackOutcome,
    reps: tuple[torch.Tensor, torch.Tensor],
    similarity: torch.Tensor,
    samples: torch.Tensor,
    classifier=None,
    sample_preds: torch.Tensor | None = None,
    target_class: int | None = None,
) -> list[dict[str, Any]]:
    """Every image's files, and the overview; returns each image's manifest entry.
    ``samples`` holds the clean representations' rows, then the adversarial ones';
    ``sample_preds`` (2 x images x n) the classifier's labels of them."""
    rows: list[tuple[list, list]] = []
    entries = []
    for i, name in enumerate(layout.names):
        entry, tiles, labels = _write_image(
            i,
            layout.files(name),
            paths[i],
            outcome,
            reps[0][i],
            reps[1][i],
            float(similarity[i]),
            samples,
            len(paths),
            classifier,
            sample_preds,
            target_class,
        )
        entries.append(entry)
        rows.append((tiles, labels))
    if layout.overview_path is not None:
        columns = samples.shape[1] + 1
        save_png(
            make_grid([t for r in rows for t in r[0]], [x for r in rows for x in r[1]], columns=columns),
            layout.overview_path,
        )
    return entries


def _write_image(
    i, files, path, outcome, clean_rep, adv_rep, similarity, samples, count, classifier, sample_preds, target_class
):
    """One image's files and its manifest entry, and its grid's tiles and labels."""
    n = samples.shape[1]
    clean_img, adv_img = outcome.clean[i].cpu(), outcome.adversarial[i].cpu()
    delta = adv_img - clean_img
    scale = float(delta.abs().max()) or 1.0
    save_png(picture(clean_img), files["clean"])
    save_png(picture(adv_img), files["adversarial"])
    save_png(to_pil(delta / scale), files["perturbation"])
    save_tensors(
        files["tensors"],
        {
            "clean": clean_img,
            "adversarial": adv_img,
            "adversarial_unquantized": outcome.raw[i].cpu(),
            "clean_representation": clean_rep,
            "adversarial_representation": adv_rep,
        },
    )
    entry = {
        "input": str(path),
        "perturbation_linf": float(outcome.norms["linf"][i]),
        "perturbation_l2": float(outcome.norms["l2"][i]),
        "cosine_similarity": similarity,
        "files": {k: str(v) for k, v in files.items()},
    }
    labels_row = ["clean", "adversarial"]
    if classifier is not None:
        c, a = int(outcome.clean_pred[i]), int(outcome.adv_pred[i])
        entry.update(
            clean_label=c,
            clean_class=classifier.name(c),
            adversarial_label=a,
            adversarial_class=classifier.name(a),
            unquantized_adversarial_label=int(outcome.raw_pred[i]),
            success=(a == target_class) if target_class is not None else (a != c),
            clean_sample_labels=sample_preds[0, i].tolist(),
            adversarial_sample_labels=sample_preds[1, i].tolist(),
        )
        labels_row = [f"clean: {classifier.name(c)}", f"adv: {classifier.name(a)}"]
    tiles, labels = [], []
    for row, img in enumerate((clean_img, adv_img)):
        tiles.append(picture(img))
        labels.append(labels_row[row])
        for k in range(n):
            tiles.append(to_pil(samples[row * count + i, k]))
            labels.append(classifier.name(int(sample_preds[row, i, k])) if sample_preds is not None else f"#{k}")
    save_png(make_grid(tiles, labels, columns=n + 1), files["grid"])
    return entry, tiles, labels


def attack_manifest(
    plan: AttackPlan,
    run,
    options,
    network_calls: int,
    *,
    classifier,
    probe: Path | None,
    batch_size: int,
    summary: dict,
    entries: list[dict],
    seeds: list[int],
    overview: Path | None,
) -> dict[str, Any]:
    return {
        "command": "attack",
        "rcdm_version": __version__,
        "method": plan.method,
        "objective": plan.objective,
        "attack_parameters": plan.params,
        "budget": plan.budget,
        "target_class": plan.target_class,
        "classifier": classifier.description if classifier else None,
        "probe": str(probe) if probe else None,
        "checkpoint": run.checkpoint_info(),
        "encoder": run.encoder_info(),
        "sampling": {**options.to_dict(), "same_noise": True, "network_calls": network_calls},
        "attack_batch_size": batch_size,
        "device": str(run.device),
        "summary": summary,
        "images": entries,
        "overview": str(overview) if overview else None,
        "seeds": seeds,
    }
