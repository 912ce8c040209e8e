"""``rcdm arith``: arithmetic on representations, and the paper's attribute transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rcdm_cli import __version__
from rcdm_cli.cli.console import log, print_json, settings
from rcdm_cli.cli.downloads import download_progress
from rcdm_cli.cli.options import (
    BATCH,
    CHECKPOINT,
    COMPILE,
    ENCODER,
    ETA,
    GUIDANCE,
    JSON,
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


def arith(
    expression: Optional[str] = typer.Argument(
        None, help="e.g. \"a.jpg - b.jpg + c.jpg\", \"0.5*(x.jpg + y.jpg)\", quoted paths for spaces."
    ),
    rescale: bool = typer.Option(False, "--rescale", help="Scale the result to the operands' mean norm."),
    attribute_from: Optional[Path] = typer.Option(None, "--attribute-from", help="Attribute transfer: the image whose attributes move."),
    neighbors: Optional[Path] = typer.Option(None, "--neighbors", help="Attribute transfer: a folder of images like it."),
    target: Optional[Path] = typer.Option(None, "--target", help="Attribute transfer: the image that receives them."),
    k: int = typer.Option(20, "--k", help="Nearest neighbours to compare with."),
    n_common: int = typer.Option(14, "--n-common", help="A dimension is shared when active in more than this many neighbours."),
    n: int = typer.Option(8, "-n", "--num-samples", help="Samples per representation."),
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
    out: Path = typer.Option(Path("arith"), "--out", "-o", help="Output folder."),
    overwrite: bool = OVERWRITE,
    json_out: bool = JSON,
) -> None:
    """Sample from a combination of image representations.

    With --attribute-from/--neighbors/--target instead of an expression: the paper's
    attribute transfer. The dimensions an image shares with its nearest neighbours
    are replaced by the target's.
    """
    import torch

    from rcdm_cli.cli.common import encode_with_status, sample_with_progress
    from rcdm_cli.devices import resolve_device
    from rcdm_cli.fileio import check_writable, write_json
    from rcdm_cli.imaging import make_grid, save_png, to_pil
    from rcdm_cli.inputs import list_images, load_image
    from rcdm_cli.outputs import SampleLayout, write_samples
    from rcdm_cli.pipeline import expression as expr
    from rcdm_cli.pipeline.representations import remove_shared, rescale_to, shared_dimensions, transfer_attributes
    from rcdm_cli.pipeline.runner import RCDMRun
    from rcdm_cli.pipeline.sampling import SamplingOptions, resolved_eta
    from rcdm_cli.preprocessing import diffusion_target

    transfer = any(v is not None for v in (attribute_from, neighbors, target))
    if transfer and expression:
        raise UsageError("give an expression or --attribute-from/--neighbors/--target, not both")
    if not transfer and not expression:
        raise UsageError("give an expression such as \"a.jpg - b.jpg + c.jpg\" (or --attribute-from/--neighbors/--target)")
    if transfer and None in (attribute_from, neighbors, target):
        raise UsageError("attribute transfer needs all of --attribute-from, --neighbors and --target")
    if transfer and rescale:
        raise UsageError("--rescale applies to expressions; attribute transfer keeps the representations' own scale")

    # Parse and check every input before loading anything.
    if transfer:
        for flag, value in (("--attribute-from", attribute_from), ("--target", target)):
            if not Path(value).expanduser().is_file():
                raise UsageError(f"{flag} must be an image file, got {value}")
        operand_paths = [Path(attribute_from).expanduser(), Path(target).expanduser()]
        if not Path(neighbors).is_dir():
            raise UsageError(f"--neighbors must be a folder of images, got {neighbors}")
        bank_paths = list_images(Path(neighbors))
        if len(bank_paths) < k:
            raise UsageError(f"--neighbors holds {len(bank_paths)} images, fewer than --k {k}")
        if not 0 <= n_common < k:
            raise UsageError(f"--n-common must be between 0 and --k - 1 = {k - 1}, got {n_common}")
        names = ["attribute", "without-shared", "transferred"]
    else:
        tree = expr.parse(expression)
        unique: dict[str, Path] = {}
        for node in expr.paths(tree):
            path = Path(node.path).expanduser()
            if not path.is_file():
                raise expr.ExpressionError(expression, node.pos, f"no such image {node.path!r}")
            unique.setdefault(node.path, path)
        operand_paths = list(unique.values())
        names = ["result"]
    run = RCDMRun.prepare(
        checkpoint=checkpoint, encoder=encoder, layer=layer, weights=weights, preprocessing=preprocessing,
        device=resolve_device(settings.device), download_progress=download_progress(), weight_set=weight_set,
    )
    options = run.resolve(SamplingOptions(
        sampler=sampler, steps=steps, eta=eta, seed=seed, batch_size=batch_size, precision=precision, compile=compile_, guidance=guidance,
    ))
    diffusion = run.check(None, n, options)
    pictures = [load_image(p) for p in operand_paths]
    if transfer:
        for p in bank_paths:  # a damaged neighbour fails now, not after the encoding
            load_image(p)
    layout = SampleLayout(out, names, n)
    overview = out / "overview.png"
    claim(out, "arith")  # one run per folder: a second one started beside it fails here
    check_writable([*layout.planned(False), overview], overwrite)

    operand_reps = encode_with_status(run, pictures, batch_size)
    details: dict = {}
    if transfer:
        bank = torch.cat([
            encode_with_status(run, [load_image(p) for p in bank_paths[i : i + batch_size]], batch_size)
            for i in range(0, len(bank_paths), batch_size)
        ])
        neighbour_idx, shared = shared_dimensions(operand_reps[0], bank, k, n_common)
        if bool(shared.all()):
            log.warning(
                "every dimension is active in more than %d of the %d neighbours (a representation without zeros, "
                "such as a projector head's or a ViT's): the transfer replaces the whole representation", n_common, k,
            )
        source, tgt = operand_reps[0], operand_reps[1]
        reps = torch.stack([source, remove_shared(source, shared), transfer_attributes(source, tgt, shared)])
        details = {
            "attribute_from": str(operand_paths[0]),
            "target": str(operand_paths[1]),
            "neighbors": [str(bank_paths[i]) for i in neighbour_idx.tolist()],
            "k": k,
            "n_common": n_common,
            "shared_dimensions": int(shared.sum()),
        }
        labels_row = ["attribute", "target"]
    else:
        by_path = dict(zip(unique, operand_reps))
        result_rep = expr.evaluate(expression, tree, lambda p: by_path[p])
        if rescale:
            result_rep = rescale_to(result_rep, operand_reps)
        reps = result_rep[None]
        coefficients = expr.signed_weights(tree)
        details = {"expression": expression, "coefficients": coefficients, "rescale": rescale, "result_norm": float(result_rep.norm())}
        labels_row = [f"{coefficients[p]:+g} {Path(p).name}" for p in unique]

    result = sample_with_progress(run, reps, n, options, diffusion.num_timesteps, same_noise=True)
    shown = [to_pil(diffusion_target(im, run.meta.image_size)) for im in pictures]
    written = write_samples(layout, result.samples)
    tiles, labels = list(shown), list(labels_row)
    columns = max(len(shown), n)
    tiles += [None] * (columns - len(shown))
    labels += [""] * (columns - len(labels_row))
    for j, name in enumerate(names):
        tiles += [to_pil(result.samples[j, i]) for i in range(n)] + [None] * (columns - n)
        labels += [f"{name} #{i}" for i in range(n)] + [""] * (columns - n)
    blank = to_pil(torch.ones(3, run.meta.image_size, run.meta.image_size))
    save_png(make_grid([t or blank for t in tiles], labels, columns=columns), overview)
    manifest = {
        "command": "arith",
        "rcdm_version": __version__,
        **details,
        "inputs": [str(p) for p in operand_paths],
        "checkpoint": run.checkpoint_info(),
        "encoder": run.encoder_info(),
        "n": n,
        "sampling": {
            **options.to_dict(), "eta": resolved_eta(options), "same_noise": True, "network_calls": diffusion.num_timesteps,
        },
        "device": str(run.device),
        "outputs": [
            {"name": name, "grid": written["grids"][j], "samples": written["samples"][j]} for j, name in enumerate(names)
        ],
        "overview": str(overview),
        "seeds": result.seeds[0],
        "timings": {"sample_seconds": round(result.seconds, 3)},
    }
    write_json(layout.manifest_path, manifest)
    if json_out:
        print_json(manifest)
    log.info("wrote %s and %d sample(s) per representation; manifest: %s", overview, n, layout.manifest_path)
