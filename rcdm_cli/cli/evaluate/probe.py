"""``rcdm evaluate probe``: linear-probe accuracy per layer, and the probes for ``rcdm attack``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.completion import complete_encoder, complete_layer
from rcdm_cli.cli.console import StepProgress, log, settings, status
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.cli.evaluate.report import JSON, NO_RESULTS, RESULTS, report
from rcdm_cli.cli.options import BATCH, WEIGHTS


def probe(
    train_dir: Path = typer.Argument(..., help="Training images, one sub-folder per class."),
    val_dir: Path = typer.Argument(..., help="Validation images, the same classes."),
    encoder: str = typer.Option(..., "--encoder", "-e", help="Encoder to probe.", autocompletion=complete_encoder),
    layer: List[str] = typer.Option(None, "--layer", "-l", help="Layer; repeat (default: backbone and head where it exists).", autocompletion=complete_layer),
    weights: Optional[Path] = WEIGHTS,
    preprocessing: str = typer.Option("native", "--preprocessing", help="native or rcdm."),
    l2: float = typer.Option(1e-4, "--l2", help="L2 penalty of the logistic regression."),
    out: Path = typer.Option(Path("probes"), "--out", "-o", help="Folder for the probe files (one per layer)."),
    batch_size: int = BATCH,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing probe files."),
    results: Path = RESULTS,
    no_results: bool = NO_RESULTS,
    json_out: bool = JSON,
) -> None:
    """Linear-probe accuracy per layer (features extracted once and cached); saves
    each probe for `rcdm attack --probe`."""
    from rcdm_cli.cli.evaluate.progress import counting
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.evaluation.encoding import build_encoder, measured_layers
    from rcdm_cli.evaluation.probe import probe_files
    from rcdm_cli.evaluation.probing import ProbeData, check_probe_options, fit_layer, probe_features, probe_record
    from rcdm_cli.fileio import check_writable

    layers = measured_layers(encoder, layer)
    check_probe_options(l2, batch_size)
    data = ProbeData.read(train_dir, val_dir)
    files = probe_files(out, encoder, weights, layers)
    check_writable(list(files.values()), overwrite)
    enc = build_encoder(encoder, weights, preprocessing, resolve_device(settings.device), download_progress())
    with StepProgress(f"extracting {', '.join(layers)} features of {data.images} images", data.images) as bar:
        features = probe_features(enc, data, layers, batch_size, counting(bar))
    if features.cached:
        log.info("features of %s from the cache", ", ".join(features.cached))
    probes = []
    for lay in layers:
        with status(f"fitting the {lay} probe"):
            probes.append(fit_layer(enc, data, features, lay, l2, files[lay]))
    rows = [
        (p.layer, str(p.dim), f"{p.train['top1']:.3f}", f"{p.val['top1']:.3f}",
         f"{p.val['top5']:.3f}" if "top5" in p.val else "-", str(p.path))
        for p in probes
    ]
    report(
        probe_record(enc, data, l2, probes), results, no_results, json_out,
        f"linear probe ({enc.name}, {len(data.classes)} classes)", rows,
        ("layer", "dim", "train top-1", "val top-1", "val top-5", "probe file"),
        written=(f"wrote {len(probes)} probe(s) to {out}",),
    )
