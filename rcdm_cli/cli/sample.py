"""``rcdm sample``: draw images from an RCDM conditioned on images or on vectors."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from rcdm_cli.cli.console import StepProgress, log, print_json, status
from rcdm_cli.cli.options import JSON, OVERWRITE, ModelChoice, SamplingChoice, model_and_sampling
from rcdm_cli.errors import UsageError
from rcdm_cli.folderlock import claim


def parse_random_rep(spec: str) -> int | None:
    """``random`` or ``random:K``: K standard-normal representation vectors."""
    if spec == "random":
        return 1
    if spec.startswith("random:"):
        try:
            count = int(spec[len("random:"):])
        except ValueError:
            count = 0
        if count <= 0:
            raise UsageError(f"--rep {spec}: expected random:K with K a positive integer")
        return count
    return None


@model_and_sampling
def sample(
    images: Optional[List[str]] = typer.Argument(
        None, help="Conditioning images: files, folders, globs, or - to read paths from stdin."
    ),
    model: ModelChoice = None,
    rep: Optional[str] = typer.Option(
        None,
        "--rep",
        help="Condition on vectors instead of images: a .safetensors/.npy/.pt file (one row per vector), "
        "or random[:K] for K standard-normal vectors.",
    ),
    n: int = typer.Option(16, "-n", "--num-samples", help="Samples per input."),
    sampling: SamplingChoice = None,
    noise: Optional[Path] = typer.Option(None, "--noise", help="Initial noise file, n x 3 x H x W or 1 x 3 x H x W."),
    out: Path = typer.Option(Path("samples"), "--out", "-o", help="Output folder."),
    save_tensors_: bool = typer.Option(False, "--save-tensors", help="Also write the raw samples in [-1, 1] as safetensors."),
    overwrite: bool = OVERWRITE,
    json_out: bool = JSON,
) -> None:
    """Draw samples conditioned on the representations of images (or on vectors).

    For each input: every sample as a PNG, a labelled grid (the input first), and a
    manifest.json for the whole run; with several inputs, an overview.png of them all.
    """
    from rcdm_cli.cli.common import prepare_run, report_written
    from rcdm_cli.fileio import check_writable
    from rcdm_cli.inputs import check_image
    from rcdm_cli.outputs import SampleLayout
    from rcdm_cli.pipeline.conditioning import check_vectors
    from rcdm_cli.pipeline.stream import SampleStream
    from rcdm_cli.tensorfile import load_tensor, provenance

    # 1. Everything that can be checked without loading weights is checked first.
    inputs, reps, random_count = _conditioning(images, rep, model)
    run, options, diffusion = prepare_run(
        model, sampling, n, reps=reps, images=bool(inputs), rep_dim=reps.shape[1] if reps is not None else None
    )
    if reps is not None:
        check_vectors(run.meta, provenance(rep), rep)
    names = _output_names(inputs, rep, reps, random_count)
    stream = SampleStream(  # random vectors (neither images nor reps) are drawn from the seed as it starts
        run, options, diffusion.num_timesteps, SampleLayout(out, names, n, overview=len(names) > 1), images=inputs,
        reps=reps, noise=load_tensor(noise, preferred=("noise",)) if noise else None, save_tensors=save_tensors_,
        inputs=[str(p) for p in inputs] if inputs else {"rep": rep, "count": len(names)},
        noise_source=str(noise) if noise else None,
    )
    for path in inputs:  # unreadable images fail here, before any work (their headers; pixels as they are read)
        check_image(path)
    claim(out, "sample")  # one run per folder: a second one started beside it fails here
    check_writable(stream.planned(), overwrite)

    # 2. Representations, then samples, a part at a time (rcdm_cli.pipeline.stream).
    final = _run_stream(stream, run, options, out)
    if json_out:
        print_json(final)
    overview = " and an overview" if final["overview"] else ""
    report_written(
        f"{len(names) * n} sample(s), {len(names)} grid(s){overview}", out, stream.timings["sample_seconds"],
        stream.layout.manifest_path,
    )


def _conditioning(images: list[str] | None, rep: str | None, model: ModelChoice):
    """The image inputs, or the vectors of --rep (None for random:K), and K."""
    from rcdm_cli.inputs import expand_inputs

    if images and rep:
        raise UsageError("give conditioning images or --rep, not both")
    if not images and not rep:
        raise UsageError("give conditioning images (files, folders, globs or -) or --rep")
    if rep and model.names_an_encoder:
        raise UsageError("--encoder, --layer, --weights and --preprocessing apply to image inputs, not to --rep")
    inputs = expand_inputs(images) if images else []
    random_count = parse_random_rep(rep) if rep else None
    reps = _load_vectors(rep) if rep and random_count is None else None
    return inputs, reps, random_count


def _output_names(inputs, rep: str | None, reps, random_count: int | None) -> list[str]:
    from rcdm_cli.outputs import unique_names
    from rcdm_cli.tensorfile import provenance

    if inputs:
        return unique_names([p.stem for p in inputs])
    recorded = provenance(rep) if reps is not None else None
    return vector_names(recorded, len(reps) if reps is not None else random_count)


def _run_stream(stream, run, options, out: Path) -> dict:
    """The stream under a progress bar; stopped, a line that says what it finished."""
    from rcdm_cli.cli.common import warn_if_ignored

    stream.load(status)
    try:
        with StepProgress(f"sampling {len(stream.layout.names) * stream.layout.n} images", stream.total_steps) as bar:
            return stream.sample(
                progress=lambda p: bar.update(p.done, p.describe()),
                on_first_part=lambda first: warn_if_ignored(run, first, options),
            )
    except BaseException:
        if stream.written:  # the finished inputs' manifest is written; say that the run is not whole
            log.warning(
                "stopped after %d of %d input(s); their files and an incomplete manifest are in %s",
                len(stream.written), len(stream.layout.names), out,
            )
        raise


def _load_vectors(rep: str):
    """A vectors file as rows (a single vector is one row)."""
    from rcdm_cli.tensorfile import load_tensor

    reps = load_tensor(rep, preferred=("reps", "rep", "representations"))
    return reps[None] if reps.ndim == 1 else reps


def vector_names(recorded: dict | None, count: int) -> list[str]:
    """Output names for vectors: the stems of the images ``rcdm encode`` computed
    them from, where its record names one image per vector; else rep-000, rep-001..."""
    from rcdm_cli.outputs import unique_names

    images = (recorded or {}).get("images")
    if isinstance(images, list) and len(images) == count and all(isinstance(p, str) for p in images):
        return unique_names([Path(p).stem for p in images])
    return [f"rep-{j:03d}" for j in range(count)]
