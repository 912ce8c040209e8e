"""FID (and precision/recall) between two image folders, with the standard
Inception-v3 features as computed by torch-fidelity, an optional extra
(``pip install 'rcdm[fid]'``). Its weights download on first use; offline, the error
says where from."""

from __future__ import annotations

import importlib
from pathlib import Path

from rcdm_cli.errors import RcdmError, UsageError
from rcdm_cli.inputs import list_images

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


def _torch_fidelity():
    try:
        return importlib.import_module("torch_fidelity")
    except ImportError:
        raise UsageError("FID needs the optional torch-fidelity package: pip install 'rcdm[fid]'") from None


def fid(samples: Path, reference: Path, *, cuda: bool = False, precision_recall: bool = True) -> dict[str, float]:
    for folder in (samples, reference):
        if not folder.is_dir():
            raise UsageError(f"no such folder: {folder}")
        if len(list_images(folder)) < 2:
            raise UsageError(f"{folder} holds fewer than two images; FID needs many (thousands for stable numbers)")
    tf = _torch_fidelity()
    try:
        metrics = tf.calculate_metrics(
            input1=str(samples), input2=str(reference), fid=True, prc=precision_recall, cuda=cuda, verbose=False,
            samples_find_deep=True,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if any(w in text.lower() for w in ("urlopen", "download", "connection", "resolve", "network", "http")):
            raise RcdmError(
                f"could not get the Inception weights ({text}); download {INCEPTION_URL} by other means "
                "into torch hub's checkpoints folder"
            ) from None
        raise RcdmError(f"FID failed: {text}") from None
    out = {"fid": float(metrics["frechet_inception_distance"])}
    if precision_recall:
        for key, name in (("precision", "precision"), ("recall", "recall"), ("f_score", "f_score")):
            if key in metrics:
                out[name] = float(metrics[key])
    out["samples"] = len(list_images(samples))
    out["reference"] = len(list_images(reference))
    return out
