"""``rcdm attack``: adversarial examples against a representation, seen through RCDM."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.console import log, print_json, status
from rcdm_cli.cli.options import OVERWRITE, ModelChoice, SamplingChoice, model_and_sampling

# the command's own options, in the order of its signature
METHOD = typer.Option(
    "pgd", "--method", "-m",
    help="A torchattacks attack by name: fgsm, pgd, pgdl2, cw, deepfool, autoattack, square, ...",
)
EPS = typer.Option(
    None, "--eps",
    help="Perturbation budget, e.g. 8/255 (default: the method's own: 8/255 for L-inf attacks, 1.0 for pgdl2).",
)
ALPHA = typer.Option(None, "--alpha", help="Step size of iterative attacks (default: the method's own, 2/255 for pgd).")
ATTACK_STEPS = typer.Option(
    None, "--attack-steps",
    help="Iterations of iterative attacks (default: the method's own: 10 for pgd, 50 for cw and deepfool).",
)
TARGET_CLASS = typer.Option(None, "--target-class", help="Targeted attack towards this class index.")
OBJECTIVE = typer.Option(
    "classifier", "--objective",
    help="classifier (attack its prediction) or representation (push the representation away).",
)
NORM = typer.Option(
    None, "--norm",
    help="Linf or L2 ball: pgd in L2 is pgdl2; attacks with a norm parameter (apgd, autoattack, square, fab) get it.",
)
PROBE = typer.Option(
    None, "--probe", help="A linear probe from `rcdm evaluate probe` (the classifier of SSL encoders)."
)
PARAM = typer.Option(None, "--param", help="Attack parameter key=value, passed to torchattacks; repeat.")
SAMPLES = typer.Option(
    8, "-n", "--num-samples", help="RCDM samples from each of the clean and adversarial representations."
)
JSON = typer.Option(False, "--json", help="Print the manifest (with the summary) as JSON on stdout.")


@model_and_sampling
def attack(
    images: List[str] = typer.Argument(..., help="Images to attack: files, folders, globs, or - for stdin."),
    method: str = METHOD,
    eps: Optional[str] = EPS,
    alpha: Optional[str] = ALPHA,
    attack_steps: Optional[int] = ATTACK_STEPS,
    target_class: Optional[int] = TARGET_CLASS,
    objective: str = OBJECTIVE,
    norm: Optional[str] = NORM,
    probe: Optional[Path] = PROBE,
    param: List[str] = PARAM,
    n: int = SAMPLES,
    model: ModelChoice = None,
    sampling: SamplingChoice = None,
    out: Path = typer.Option(Path("attack"), "--out", "-o", help="Output folder."),
    overwrite: bool = OVERWRITE,
    json_out: bool = JSON,
) -> None:
    """Attack images, then sample RCDM from the clean and the adversarial representation.

    Does the perturbation change what the representation says? A supervised
    ResNet-50's samples take the attacked class; SSL representations keep the content.
    """
    from rcdm_cli.attacks.job import AttackJob, AttackRequest
    from rcdm_cli.cli.common import prepare_run, report_written, sample_with_progress
    from rcdm_cli.inputs import expand_inputs

    # 1. Everything that needs no weights is checked first.
    request = AttackRequest.parse(
        objective=objective, method=method, eps=eps, alpha=alpha, steps=attack_steps, norm=norm,
        target_class=target_class, params=param or [], batch_size=sampling.batch_size,
    )
    paths = expand_inputs(images)
    run, options, diffusion = prepare_run(model, sampling, n)
    job = AttackJob.prepare(
        request, run, options, diffusion.num_timesteps, paths, n=n, out=out, overwrite=overwrite, probe=probe,
        event=lambda message: log.info("%s", message),
    )
    # 2. The attack, and RCDM from both representations (rcdm_cli.attacks.job).
    done = job.execute(status, sample=lambda reps, count, opts, **kw: sample_with_progress(
        run, reps, count, opts, diffusion.num_timesteps, **kw))
    _warn_if_rounding_undid(done.summary)
    if json_out:
        print_json(done.manifest)
    else:
        _print_tables(job.plan, done.representation, done.entries, done.summary, n, done.classified)
    what = f"{len(paths)} attacked image(s) with {n} sample(s) from each representation"
    report_written(what, out, done.seconds, job.layout.manifest_path)


def _warn_if_rounding_undid(summary: dict) -> None:
    """Minimum-norm attacks stop just past the decision boundary, so the 8-bit image the
    files hold may not fool the classifier; a reader would otherwise take it for a
    failed attack."""
    undone = summary.get("images_where_rounding_undid_the_attack", 0)
    if undone:
        log.warning(
            "rounding the adversarial image to 8 bits undid the attack on %d image(s): minimum-norm attacks stop just "
            "past the decision boundary; raise --param overshoot (deepfool) or --param kappa (cw)", undone,
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
