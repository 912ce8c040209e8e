"""``rcdm evaluate fid``: FID (and precision/recall) with torch-fidelity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rcdm_cli.cli.console import log, settings, status
from rcdm_cli.cli.evaluate.report import JSON, NO_RESULTS, RESULTS, report


def fid(
    samples: Path = typer.Argument(..., help="Folder of generated images."),
    reference: Path = typer.Argument(..., help="Folder of real images."),
    precision_recall: bool = typer.Option(False, "--precision-recall/--no-precision-recall", help="Also precision and recall (downloads VGG-16 weights as well)."),
    size: Optional[int] = typer.Option(None, "--size", help="Square size both folders are brought to when their images differ (default: the samples' own size, else 299)."),
    results: Path = RESULTS,
    no_results: bool = NO_RESULTS,
    json_out: bool = JSON,
) -> None:
    """FID (and, on request, precision/recall) with the standard Inception features (torch-fidelity)."""
    import contextlib

    from rcdm_cli.cli.evaluate.progress import FolderProgress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.evaluation import fid as fid_lib
    from rcdm_cli.inputs import list_images

    fid_lib.check_folders(samples, reference, size)
    tf = fid_lib.torch_fidelity()  # the missing extra is reported before any work
    device = resolve_device(settings.device)
    with contextlib.ExitStack() as stack:
        with FolderProgress("resizing images to one size") as progress:
            inputs = stack.enter_context(fid_lib.uniform_inputs(tf, samples, reference, size, progress))
        if inputs.resized:
            log.info("images brought to %d x %d (%s)", inputs.size, inputs.size, inputs.resized)
        with status("computing Inception features" + (" and VGG-16 features" if precision_recall else "")):
            values = fid_lib.compute(tf, inputs, cuda=device.type == "cuda", precision_recall=precision_recall)
    values.update(samples=len(list_images(samples)), reference=len(list_images(reference)), size=inputs.size)
    record = {"metric": "fid", "samples_dir": str(samples), "reference_dir": str(reference), "resized": inputs.resized, **values}
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    report(record, results, no_results, json_out, "FID", rows, ("metric", "value"))
