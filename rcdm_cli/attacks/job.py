"""The adversarial experiment end to end, as ``rcdm attack`` runs it, in two steps so
that a mistake costs nothing: :meth:`AttackJob.prepare` decides and checks everything
from the model's metadata and the images' files before any weights load, and
:meth:`AttackJob.execute` attacks, samples RCDM from both representations with the
same noise, and writes the files and the manifest.

Loading, attacking and sampling report through callbacks (a ``status(what)`` context
and the ``sample`` function) so that a caller can show their progress."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from PIL import Image

from rcdm_cli.attacks import experiment
from rcdm_cli.attacks.methods import parse_params, parse_size
from rcdm_cli.attacks.outputs import AttackLayout, attack_manifest, classify_samples, write_images
from rcdm_cli.encoders import get_registry
from rcdm_cli.errors import UsageError
from rcdm_cli.evaluation.probe import Probe
from rcdm_cli.fileio import check_writable, write_json
from rcdm_cli.folderlock import claim
from rcdm_cli.inputs import load_image
from rcdm_cli.outputs import unique_names


@dataclass(frozen=True)
class AttackRequest:
    """The attack as asked for, its numbers parsed; the model decides the rest."""

    objective: str
    method: str
    eps: float | None = None
    alpha: float | None = None
    steps: int | None = None
    norm: str | None = None
    target_class: int | None = None
    params: dict[str, str] | None = None

    @classmethod
    def parse(
        cls, *, objective: str, method: str, eps: str | None, alpha: str | None, steps: int | None, norm: str | None,
        target_class: int | None, params: list[str], batch_size: int,
    ) -> "AttackRequest":
        """What can be refused before the model is even looked up."""
        if objective not in experiment.OBJECTIVES:
            raise UsageError(f"--objective must be one of {', '.join(experiment.OBJECTIVES)}, got {objective!r}")
        if batch_size < 1:
            raise UsageError(f"--batch-size must be positive, got {batch_size}")
        return cls(
            objective, method, eps=parse_size(eps, "--eps") if eps is not None else None,
            alpha=parse_size(alpha, "--alpha") if alpha is not None else None, steps=steps, norm=norm,
            target_class=target_class, params=parse_params(params),
        )


@dataclass
class AttackDone:
    """What the command shows of a finished run."""

    manifest: dict[str, Any]
    entries: list[dict[str, Any]]  # per image, as in the manifest
    summary: dict[str, Any]
    representation: str  # encoder/layer
    classified: bool
    seconds: float  # of sampling


@dataclass
class AttackJob:
    """A request made concrete for one model: everything decided, nothing loaded."""

    run: Any  # an RCDMRun, prepared
    options: Any  # its SamplingOptions, resolved
    network_calls: int
    plan: experiment.AttackPlan
    n_classes: int | None  # None: no classifier (the representation objective without a probe)
    probe: Probe | None
    probe_path: Path | None
    paths: list[Path]
    pictures: list[Image.Image]
    layout: AttackLayout
    n: int

    @classmethod
    def prepare(
        cls, request: AttackRequest, run, options, network_calls: int, paths: list[Path], *, n: int, out: Path,
        overwrite: bool, probe: Path | None = None, event: Callable[[str], None] = lambda message: None,
    ) -> "AttackJob":
        """The plan for this model, the images read and the output folder claimed, every
        file checked; ``event(message)`` hears what the request was taken to mean."""
        probe_obj = Probe.load(probe) if probe else None
        n_classes = experiment.classifier_size(get_registry().describe(run.plan.encoder).layers, probe_obj)
        if request.objective == "classifier" and n_classes is None:
            raise experiment.no_classifier(run.plan.encoder)
        plan = experiment.plan(
            objective=request.objective, method=request.method, eps=request.eps, alpha=request.alpha,
            steps=request.steps, norm=request.norm, target_class=request.target_class, params=request.params,
            n_classes=n_classes, seed=options.seed,
        )
        if plan.method != request.method.lower():
            event(f"{request.method.lower()} in an {request.norm} ball is {plan.method}")
        pictures = [load_image(p) for p in paths]
        layout = AttackLayout(out, unique_names([p.stem for p in paths]))
        claim(out, "attack")  # one run per folder: a second one started beside it fails here
        check_writable(layout.planned(), overwrite)
        return cls(run, options, network_calls, plan, n_classes, probe_obj, probe, paths, pictures, layout, n)

    def execute(
        self,
        status: Callable[[str], ContextManager] = lambda what: nullcontext(),
        sample: Callable | None = None,
    ) -> AttackDone:
        """The attack, on exactly the tensors that are saved; RCDM from the clean and the
        adversarial representations with the same noise, and what the classifier sees in
        the samples. ``sample(reps, n, options, same_noise=True)`` defaults to the run's own."""
        run, options, n, batch_size = self.run, self.options, self.n, self.options.batch_size
        sample = sample or (lambda reps, count, opts, **kw: run.sample(reps, count, opts, **kw))
        with status(f"loading {run.plan.encoder}"):
            enc = run.encoder
        classifier = experiment.build_classifier(enc, self.probe) if self.n_classes is not None else None

        def represent(batch):
            return enc(batch, run.plan.layer)

        x = enc.prepare(self.pictures)
        with status(f"attacking {len(self.paths)} image(s) with {self.plan.method}"):
            outcome = experiment.attack_images(
                x, self.plan, classifier=classifier, represent=represent, batch_size=batch_size, seed=options.seed
            )
        clean_reps, adv_reps = experiment.representations(outcome, represent, batch_size)
        similarity = experiment.cosine(clean_reps, adv_reps)
        result = sample(torch.cat([clean_reps, adv_reps]), n, options, same_noise=True)
        sample_preds = None
        if classifier is not None:
            with status(f"classifying {result.samples.shape[0] * n} samples"):
                predicted = classify_samples(enc, classifier, result.samples, batch_size)
                sample_preds = predicted.reshape(2, len(self.paths), n)
        entries = write_images(
            self.layout, self.paths, outcome, (clean_reps, adv_reps), similarity, result.samples, classifier,
            sample_preds, self.plan.target_class,
        )
        summary = experiment.summarize(entries, similarity, outcome.norms, n, classifier is not None)
        manifest = attack_manifest(
            self.plan, run, options, self.network_calls, classifier=classifier, probe=self.probe_path,
            batch_size=batch_size, summary=summary, entries=entries, seeds=result.seeds[0],
            overview=self.layout.overview_path,
        )
        write_json(self.layout.manifest_path, manifest)
        return AttackDone(
            manifest, entries, summary, f"{enc.name}/{run.plan.layer}", classifier is not None, result.seconds
        )
