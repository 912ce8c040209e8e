"""``rcdm attack``: adversarial examples against a representation, seen through RCDM."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli import __version__
from rcdm_cli.cli.console import log, print_json, settings, status
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.cli.sample import (
    BATCH,
    CHECKPOINT,
    COMPILE,
    ENCODER,
    ETA,
    LAYER,
    OVERWRITE,
    PRECISION,
    PREPROCESSING,
    SAMPLER,
    SEED,
    STEPS,
    WEIGHTS,
)
from rcdm_cli.errors import UsageError


def attack(
    images: List[str] = typer.Argument(..., help="Images to attack: files, folders, globs, or - for stdin."),
    method: str = typer.Option("pgd", "--method", "-m", help="A torchattacks attack by name: fgsm, pgd, pgdl2, cw, deepfool, autoattack, square, ..."),
    eps: str = typer.Option("8/255", "--eps", help="Perturbation budget (fractions such as 8/255 accepted)."),
    alpha: str = typer.Option("2/255", "--alpha", help="Step size of iterative attacks."),
    attack_steps: int = typer.Option(10, "--attack-steps", help="Iterations of iterative attacks."),
    target_class: Optional[int] = typer.Option(None, "--target-class", help="Targeted attack towards this class index."),
    objective: str = typer.Option("classifier", "--objective", help="classifier (attack its prediction) or representation (push the representation away)."),
    norm: str = typer.Option("Linf", "--norm", help="Ball of the representation objective: Linf or L2."),
    probe: Optional[Path] = typer.Option(None, "--probe", help="A linear probe from `rcdm evaluate probe` (the classifier of SSL encoders)."),
    param: List[str] = typer.Option(None, "--param", help="Attack parameter key=value, passed to torchattacks; repeat."),
    n: int = typer.Option(8, "-n", "--num-samples", help="RCDM samples from each of the clean and adversarial representations."),
    checkpoint: Optional[str] = CHECKPOINT,
    encoder: Optional[str] = ENCODER,
    layer: Optional[str] = LAYER,
    weights: Optional[Path] = WEIGHTS,
    preprocessing: Optional[str] = PREPROCESSING,
    sampler: str = SAMPLER,
    steps: str = STEPS,
    eta: Optional[float] = ETA,
    seed: int = SEED,
    batch_size: int = BATCH,
    precision: str = PRECISION,
    compile_: bool = COMPILE,
    out: Path = typer.Option(Path("attack"), "--out", "-o", help="Output folder."),
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print the manifest (with the summary) as JSON on stdout."),
) -> None:
    """Attack images, then sample RCDM from the clean and the adversarial representation.

    Does the perturbation change what the representation says? A supervised
    ResNet-50's samples take the attacked class; SSL representations keep the content.
    """
    import torch

    from rcdm_cli.attacks.experiment import attack_images, build_classifier, cosine
    from rcdm_cli.attacks.methods import available, parse_params, parse_size
    from rcdm_cli.cli.common import sample_with_progress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.evaluation.probe import Probe
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.imaging import make_grid, save_png, to_pil
    from rcdm_cli.inputs import expand_inputs, load_image
    from rcdm_cli.outputs import unique_names
    from rcdm_cli.pipeline.runner import RCDMRun
    from rcdm_cli.pipeline.sampling import SamplingOptions

    if method.lower() not in available():
        raise UsageError(f"unknown attack {method!r}; choose one of: {', '.join(available())}")
    eps_v, alpha_v = parse_size(eps, "--eps"), parse_size(alpha, "--alpha")
    if attack_steps <= 0:
        raise UsageError("--attack-steps must be positive")
    params = parse_params(param or [])
    paths = expand_inputs(images)
    run = RCDMRun.prepare(
        checkpoint=checkpoint, encoder=encoder, layer=layer, weights=weights, preprocessing=preprocessing,
        device=resolve_device(settings.device), download_progress=download_progress(),
    )
    options = SamplingOptions(
        sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision, compile=compile_
    )
    diffusion = run.check(None, n, options)
    probe_obj = Probe.load(probe) if probe else None
    pictures = [load_image(p) for p in paths]
    names = unique_names([p.stem for p in paths])
    files = {name: {k: out / name / f"{k}.png" for k in ("clean", "adversarial", "perturbation", "grid")} for name in names}
    check_writable([f for group in files.values() for f in group.values()] + [out / "manifest.json"], overwrite)

    enc = run.encoder
    with status(f"loading the classifier on {enc.name}"):
        classifier = None
        if objective == "classifier" or probe_obj is not None or "logits" in enc.layers:
            classifier = build_classifier(enc, probe_obj)
    x = enc.prepare(pictures)

    def represent(batch):
        return enc(batch, run.plan.layer)

    with status(f"attacking {len(paths)} image(s) with {method}"):
        outcome = attack_images(
            x, method=method.lower(), objective=objective, classifier=classifier, represent=represent, eps=eps_v,
            alpha=alpha_v, steps=attack_steps, norm=norm, target_class=target_class, params=params, seed=seed,
        )
    with torch.no_grad():
        clean_reps, adv_reps = represent(outcome.clean).cpu(), represent(outcome.adversarial).cpu()
    similarity = cosine(clean_reps, adv_reps)
    result = sample_with_progress(run, torch.cat([clean_reps, adv_reps]), n, options, diffusion.num_timesteps, same_noise=True)
    count = len(paths)
    clean_samples, adv_samples = result.samples[:count], result.samples[count:]

    sample_preds = None
    if classifier is not None:
        flat = [to_pil(s) for s in torch.cat([clean_samples, adv_samples]).reshape(-1, *result.samples.shape[2:])]
        with status(f"classifying {len(flat)} samples"):
            sample_preds = classifier.predict(enc.prepare(flat)).reshape(2, count, n).cpu()

    per_image, keep, take, clean_ok = [], 0, 0, 0
    for i, name in enumerate(names):
        clean_img, adv_img = outcome.clean[i].cpu(), outcome.adversarial[i].cpu()
        delta = adv_img - clean_img
        scale = float(delta.abs().max()) or 1.0
        save_png(to_pil(clean_img * 2 - 1), files[name]["clean"])
        save_png(to_pil(adv_img * 2 - 1), files[name]["adversarial"])
        save_png(to_pil(delta / scale), files[name]["perturbation"])
        entry = {
            "input": str(paths[i]),
            "perturbation_norm": float(outcome.perturbation[i]),
            "norm": outcome.norm or "Linf",
            "cosine_similarity": float(similarity[i]),
            "files": {k: str(v) for k, v in files[name].items()},
        }
        labels_row = ["clean", "adversarial"]
        if classifier is not None:
            c, a = int(outcome.clean_pred[i]), int(outcome.adv_pred[i])
            sc, sa = sample_preds[0, i].tolist(), sample_preds[1, i].tolist()
            keep += sum(p == c for p in sa)
            take += sum(p == a for p in sa) if a != c else 0
            clean_ok += sum(p == c for p in sc)
            entry.update(
                clean_label=c, clean_class=classifier.name(c), adversarial_label=a, adversarial_class=classifier.name(a),
                success=(a == target_class) if target_class is not None else (a != c),
                clean_sample_labels=sc, adversarial_sample_labels=sa,
            )
            labels_row = [f"clean: {classifier.name(c)}", f"adv: {classifier.name(a)}"]
        tiles, labels = [], []
        for row, (img, samples) in enumerate(((clean_img, clean_samples[i]), (adv_img, adv_samples[i]))):
            tiles.append(to_pil(img * 2 - 1))
            labels.append(labels_row[row])
            for k in range(n):
                tiles.append(to_pil(samples[k]))
                labels.append(classifier.name(sample_preds[row, i, k]) if sample_preds is not None else f"#{k}")
        save_png(make_grid(tiles, labels, columns=n + 1), files[name]["grid"])
        per_image.append(entry)

    summary = {"images": count, "samples_per_image": n, "mean_cosine_similarity": float(similarity.mean())}
    if classifier is not None:
        summary.update(
            attack_success_rate=sum(e["success"] for e in per_image) / count,
            adversarial_samples_keeping_clean_label=keep / (count * n),
            adversarial_samples_taking_adversarial_label=take / (count * n),
            clean_samples_with_clean_label=clean_ok / (count * n),
        )
    manifest = {
        "command": "attack",
        "rcdm_version": __version__,
        "method": method.lower(),
        "objective": objective,
        "attack_parameters": outcome.params,
        "target_class": target_class,
        "classifier": classifier.description if classifier else None,
        "probe": str(probe) if probe else None,
        "checkpoint": run.checkpoint_info(),
        "encoder": run.encoder_info(),
        "sampling": {**options.to_dict(), "same_noise": True, "network_calls": diffusion.num_timesteps},
        "device": str(run.device),
        "summary": summary,
        "images": per_image,
        "seeds": result.seeds[0],
    }
    write_json(out / "manifest.json", manifest)
    if json_out:
        print_json(manifest)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{method} on {enc.name}/{run.plan.layer} ({objective} objective)")
    for column in ("image", "clean", "adversarial", "‖δ‖", "cos(clean, adv)", "adv samples: clean / adv label"):
        table.add_column(column)
    for e in per_image:
        if classifier is not None:
            k = sum(p == e["clean_label"] for p in e["adversarial_sample_labels"])
            t = sum(p == e["adversarial_label"] for p in e["adversarial_sample_labels"]) if e["adversarial_label"] != e["clean_label"] else 0
            table.add_row(Path(e["input"]).name, e["clean_class"], e["adversarial_class"], f"{e['perturbation_norm']:.4f}", f"{e['cosine_similarity']:.3f}", f"{k} / {t} of {n}")
        else:
            table.add_row(Path(e["input"]).name, "-", "-", f"{e['perturbation_norm']:.4f}", f"{e['cosine_similarity']:.3f}", "-")
    Console().print(table)
    if classifier is not None:
        log.info(
            "attack success %.0f%%; adversarial samples keep the clean label %.0f%%, take the adversarial one %.0f%%; manifest: %s",
            100 * summary["attack_success_rate"], 100 * summary["adversarial_samples_keeping_clean_label"],
            100 * summary["adversarial_samples_taking_adversarial_label"], out / "manifest.json",
        )
