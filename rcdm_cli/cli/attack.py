"""``rcdm attack``: adversarial examples against a representation, seen through RCDM."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.console import log, print_json, status
from rcdm_cli.cli.options import OVERWRITE, ModelChoice, SamplingChoice, model_and_sampling
from rcdm_cli.errors import UsageError
from rcdm_cli.folderlock import claim


@model_and_sampling
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
    model: ModelChoice = None,
    sampling: SamplingChoice = None,
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
    from rcdm_cli.attacks.outputs import AttackLayout, attack_manifest, classify_samples, write_images
    from rcdm_cli.cli.common import prepare_run, report_written, sample_with_progress
    from rcdm_cli.encoders import get_registry
    from rcdm_cli.evaluation.probe import Probe
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.inputs import expand_inputs, load_image
    from rcdm_cli.outputs import unique_names

    # 1. Everything that needs no weights is checked first.
    if objective not in experiment.OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(experiment.OBJECTIVES)}, got {objective!r}")
    if sampling.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {sampling.batch_size}")
    batch_size, seed = sampling.batch_size, sampling.seed
    eps_v = parse_size(eps, "--eps") if eps is not None else None
    alpha_v = parse_size(alpha, "--alpha") if alpha is not None else None
    params = parse_params(param or [])
    paths = expand_inputs(images)
    run, options, diffusion = prepare_run(model, sampling, n)
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
    layout = AttackLayout(out, unique_names([p.stem for p in paths]))
    claim(out, "attack")  # one run per folder: a second one started beside it fails here
    check_writable(layout.planned(), overwrite)

    # 2. The attack, on exactly the tensors that are saved.
    with status(f"loading {run.plan.encoder}"):
        enc = run.encoder
    classifier = experiment.build_classifier(enc, probe_obj) if n_classes is not None else None
    x = enc.prepare(pictures)

    def represent(batch):
        return enc(batch, run.plan.layer)

    with status(f"attacking {len(paths)} image(s) with {plan.method}"):
        outcome = experiment.attack_images(x, plan, classifier=classifier, represent=represent, batch_size=batch_size, seed=seed)
    clean_reps, adv_reps = experiment.representations(outcome, represent, batch_size)
    similarity = experiment.cosine(clean_reps, adv_reps)

    # 3. RCDM from both representations, with the same noise, and what the classifier sees in the samples.
    result = sample_with_progress(run, torch.cat([clean_reps, adv_reps]), n, options, diffusion.num_timesteps, same_noise=True)
    sample_preds = None
    if classifier is not None:
        with status(f"classifying {result.samples.shape[0] * n} samples"):
            sample_preds = classify_samples(enc, classifier, result.samples, batch_size).reshape(2, len(paths), n)
    per_image = write_images(
        layout, paths, outcome, (clean_reps, adv_reps), similarity, result.samples, classifier, sample_preds, plan.target_class,
    )
    summary = experiment.summarize(per_image, similarity, outcome.norms, n, classifier is not None)
    manifest = attack_manifest(
        plan, run, options, diffusion.num_timesteps, classifier=classifier, probe=probe, batch_size=batch_size,
        summary=summary, entries=per_image, seeds=result.seeds[0], overview=layout.overview_path,
    )
    write_json(layout.manifest_path, manifest)
    undone = summary.get("images_where_rounding_undid_the_attack", 0)
    if undone:
        log.warning(
            "rounding the adversarial image to 8 bits undid the attack on %d image(s): minimum-norm attacks stop just "
            "past the decision boundary; raise --param overshoot (deepfool) or --param kappa (cw)", undone,
        )
    if json_out:
        print_json(manifest)
    else:
        _print_tables(plan, f"{enc.name}/{run.plan.layer}", per_image, summary, n, classifier is not None)
    report_written(
        f"{len(paths)} attacked image(s) with {n} sample(s) from each representation", out, result.seconds,
        layout.manifest_path,
    )


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
