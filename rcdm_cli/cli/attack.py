"""``rcdm attack``: adversarial examples against a representation, seen through RCDM."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli import __version__
from rcdm_cli.cli.console import log, print_json, settings, status
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.cli.options import (
    BATCH,
    CHECKPOINT,
    COMPILE,
    ENCODER,
    ETA,
    GUIDANCE,
    LAYER,
    OVERWRITE,
    PRECISION,
    PREPROCESSING,
    SAMPLER,
    SEED,
    STEPS,
    WEIGHT_SET,
    WEIGHTS,
)
from rcdm_cli.errors import UsageError
from rcdm_cli.folderlock import claim

FILES = ("clean", "adversarial", "perturbation", "grid")


def attack(
    images: List[str] = typer.Argument(..., help="Images to attack: files, folders, globs, or - for stdin."),
    method: str = typer.Option("pgd", "--method", "-m", help="A torchattacks attack by name: fgsm, pgd, pgdl2, cw, deepfool, autoattack, square, ..."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Perturbation budget, e.g. 8/255 (default: the method's own: 8/255 for L-inf attacks, 1.0 for pgdl2)."),
    alpha: Optional[str] = typer.Option(None, "--alpha", help="Step size of iterative attacks (default: the method's own, 2/255 for pgd)."),
    attack_steps: Optional[int] = typer.Option(None, "--attack-steps", help="Iterations of iterative attacks (default: the method's own: 10 for pgd, 50 for cw and deepfool)."),
    target_class: Optional[int] = typer.Option(None, "--target-class", help="Targeted attack towards this class index."),
    objective: str = typer.Option("classifier", "--objective", help="classifier (attack its prediction) or representation (push the representation away)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="Linf or L2 ball: pgd in L2 is pgdl2; attacks with a norm parameter (apgd, autoattack, square, fab) get it."),
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
    guidance: float = GUIDANCE,
    weight_set: Optional[str] = WEIGHT_SET,
    out: Path = typer.Option(Path("attack"), "--out", "-o", help="Output folder."),
    overwrite: bool = OVERWRITE,
    json_out: bool = typer.Option(False, "--json", help="Print the manifest (with the summary) as JSON on stdout."),
) -> None:
    """Attack images, then sample RCDM from the clean and the adversarial representation.

    Does the perturbation change what the representation says? A supervised
    ResNet-50's samples take the attacked class; SSL representations keep the content.
    """
    import torch

    from rcdm_cli.attacks import experiment
    from rcdm_cli.attacks.methods import parse_params, parse_size
    from rcdm_cli.cli.common import sample_with_progress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.encoders import get_registry
    from rcdm_cli.evaluation.probe import Probe
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.inputs import expand_inputs, load_image
    from rcdm_cli.outputs import unique_names
    from rcdm_cli.pipeline.runner import RCDMRun
    from rcdm_cli.pipeline.sampling import SamplingOptions

    # 1. Everything that needs no weights is checked first.
    if objective not in experiment.OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(experiment.OBJECTIVES)}, got {objective!r}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {batch_size}")
    eps_v = parse_size(eps, "--eps") if eps is not None else None
    alpha_v = parse_size(alpha, "--alpha") if alpha is not None else None
    params = parse_params(param or [])
    paths = expand_inputs(images)
    run = RCDMRun.prepare(
        checkpoint=checkpoint, encoder=encoder, layer=layer, weights=weights, preprocessing=preprocessing,
        device=resolve_device(settings.device), download_progress=download_progress(), weight_set=weight_set,
    )
    options = run.resolve(SamplingOptions(
        sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision, compile=compile_, guidance=guidance,
    ))
    diffusion = run.check(None, n, options)
    probe_obj = Probe.load(probe) if probe else None
    n_classes = experiment.classifier_size(get_registry().layers(run.plan.encoder)[0], probe_obj)
    if objective == "classifier" and n_classes is None:
        raise experiment.no_classifier(run.plan.encoder)
    plan = experiment.plan(
        objective=objective, method=method, eps=eps_v, alpha=alpha_v, steps=attack_steps, norm=norm,
        target_class=target_class, params=params, n_classes=n_classes, seed=seed,
    )
    if plan.method != method.lower():
        log.info("%s in an %s ball is %s", method.lower(), norm, plan.method)
    pictures = [load_image(p) for p in paths]
    names = unique_names([p.stem for p in paths])
    files = {name: {k: out / name / f"{k}.png" for k in FILES} | {"tensors": out / name / "tensors.safetensors"} for name in names}
    claim(out, "attack")  # one run per folder: a second one started beside it fails here
    check_writable([f for group in files.values() for f in group.values()] + [out / "manifest.json"], overwrite)

    # 2. The attack, on exactly the tensors that are saved.
    with status(f"loading {run.plan.encoder}"):
        enc = run.encoder
    classifier = experiment.build_classifier(enc, probe_obj) if n_classes is not None else None
    x = enc.prepare(pictures)

    def represent(batch):
        return enc(batch, run.plan.layer)

    with status(f"attacking {len(paths)} image(s) with {plan.method}"):
        outcome = experiment.attack_images(x, plan, classifier=classifier, represent=represent, batch_size=batch_size, seed=seed)
    with torch.no_grad():
        clean_reps = torch.cat([represent(b).cpu() for b in outcome.clean.split(batch_size)])
        adv_reps = torch.cat([represent(b).cpu() for b in outcome.adversarial.split(batch_size)])
    similarity = experiment.cosine(clean_reps, adv_reps)

    # 3. RCDM from both representations, with the same noise, and what the classifier sees in the samples.
    result = sample_with_progress(run, torch.cat([clean_reps, adv_reps]), n, options, diffusion.num_timesteps, same_noise=True)
    count = len(paths)
    sample_preds = None
    if classifier is not None:
        sample_preds = _classify_samples(enc, classifier, result.samples, batch_size).reshape(2, count, n)

    per_image = [
        _write_image(i, files[name], paths[i], outcome, clean_reps[i], adv_reps[i], float(similarity[i]), result.samples, count,
                     n, classifier, sample_preds, plan.target_class)
        for i, name in enumerate(names)
    ]
    summary = experiment.summarize(per_image, similarity, outcome.norms, n, classifier is not None)
    manifest = {
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
        "sampling": {**options.to_dict(), "same_noise": True, "network_calls": diffusion.num_timesteps},
        "attack_batch_size": batch_size,
        "device": str(run.device),
        "summary": summary,
        "images": per_image,
        "seeds": result.seeds[0],
    }
    write_json(out / "manifest.json", manifest)
    undone = summary.get("images_where_rounding_undid_the_attack", 0)
    if undone:
        log.warning(
            "rounding the adversarial image to 8 bits undid the attack on %d image(s): minimum-norm attacks stop just "
            "past the decision boundary; raise --param overshoot (deepfool) or --param kappa (cw)", undone,
        )
    if json_out:
        print_json(manifest)
        return
    _print_tables(plan, f"{enc.name}/{run.plan.layer}", per_image, summary, n, classifier is not None)
    log.info("manifest: %s", out / "manifest.json")


def _classify_samples(enc, classifier, samples, batch_size: int):
    """The classifier's labels of RCDM samples, seen as images again (resized to the
    encoder's input like any picture)."""
    import torch

    from rcdm_cli.imaging import to_pil

    flat = samples.reshape(-1, *samples.shape[2:])
    with status(f"classifying {len(flat)} samples"):
        preds = [
            classifier.predict(enc.prepare([to_pil(s) for s in flat[i : i + batch_size]]), batch_size).cpu()
            for i in range(0, len(flat), batch_size)
        ]
    return torch.cat(preds)


def _picture(x):
    """A [0, 1] tensor on the 8-bit grid as the image file holding exactly it."""
    import torch
    from PIL import Image

    from rcdm_cli.attacks.experiment import to_8bit

    arr = to_8bit(x.detach().cpu()).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, mode="RGB")


def _write_image(i, files, path, outcome, clean_rep, adv_rep, similarity, samples, count, n, classifier, sample_preds, target_class):
    """One image's files and its manifest entry."""
    from rcdm_cli.imaging import make_grid, save_png, to_pil
    from rcdm_cli.tensorfile import save_tensors

    clean_img, adv_img = outcome.clean[i].cpu(), outcome.adversarial[i].cpu()
    delta = adv_img - clean_img
    scale = float(delta.abs().max()) or 1.0
    save_png(_picture(clean_img), files["clean"])
    save_png(_picture(adv_img), files["adversarial"])
    save_png(to_pil(delta / scale), files["perturbation"])
    save_tensors(files["tensors"], {
        "clean": clean_img, "adversarial": adv_img, "adversarial_unquantized": outcome.raw[i].cpu(),
        "clean_representation": clean_rep, "adversarial_representation": adv_rep,
    })
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
            clean_label=c, clean_class=classifier.name(c), adversarial_label=a, adversarial_class=classifier.name(a),
            unquantized_adversarial_label=int(outcome.raw_pred[i]),
            success=(a == target_class) if target_class is not None else (a != c),
            clean_sample_labels=sample_preds[0, i].tolist(), adversarial_sample_labels=sample_preds[1, i].tolist(),
        )
        labels_row = [f"clean: {classifier.name(c)}", f"adv: {classifier.name(a)}"]
    tiles, labels = [], []
    for row, img in enumerate((clean_img, adv_img)):
        tiles.append(_picture(img))
        labels.append(labels_row[row])
        for k in range(n):
            tiles.append(to_pil(samples[row * count + i, k]))
            labels.append(classifier.name(int(sample_preds[row, i, k])) if sample_preds is not None else f"#{k}")
    save_png(make_grid(tiles, labels, columns=n + 1), files["grid"])
    return entry


def _print_tables(plan, where: str, per_image: list[dict], summary: dict, n: int, classified: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{plan.method} on {where} ({plan.objective} objective)")
    for column in ("image", "clean", "adversarial", "‖δ‖∞", "‖δ‖₂", "cos(clean, adv)", "adv samples: clean / adv label"):
        table.add_column(column)
    for e in per_image:
        norms = (f"{e['perturbation_linf'] * 255:.1f}/255", f"{e['perturbation_l2']:.4f}", f"{e['cosine_similarity']:.3f}")
        if classified:
            labels = e["adversarial_sample_labels"]
            keep = sum(p == e["clean_label"] for p in labels)
            take = sum(p == e["adversarial_label"] for p in labels) if e["adversarial_label"] != e["clean_label"] else 0
            table.add_row(Path(e["input"]).name, e["clean_class"], e["adversarial_class"], *norms, f"{keep} / {take} of {n}")
        else:
            table.add_row(Path(e["input"]).name, "-", "-", *norms, "-")
    console.print(table)

    totals = Table(title="summary")
    totals.add_column("quantity")
    totals.add_column("value", justify="right")
    rows = []
    if classified:
        rows += [
            ("attack success rate", f"{summary['attack_success_rate']:.1%}"),
            ("adversarial samples keeping the clean label", f"{summary['adversarial_samples_keeping_clean_label']:.1%}"),
            ("adversarial samples taking the adversarial label", f"{summary['adversarial_samples_taking_adversarial_label']:.1%}"),
            ("clean samples with the clean label (accuracy)", f"{summary['clean_samples_with_clean_label']:.1%}"),
        ]
    rows += [
        ("mean cosine(clean, adversarial representation)", f"{summary['mean_cosine_similarity']:.4f}"),
        ("mean ‖δ‖∞ / mean ‖δ‖₂", f"{summary['mean_perturbation_linf'] * 255:.2f}/255 / {summary['mean_perturbation_l2']:.4f}"),
        ("budget", f"{plan.budget['norm']} ≤ {plan.budget['eps']:.4g}" if plan.budget else "none (minimum-norm attack)"),
        ("images × samples", f"{summary['images']} × {summary['samples_per_image']}"),
    ]
    for row in rows:
        totals.add_row(*row)
    console.print(totals)
