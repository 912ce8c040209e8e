"""Sampling a long list of inputs a part at a time, as ``rcdm sample`` does.

Each part's images are read and encoded (or its vectors taken), sampled, and each
input's files are written as soon as its samples are complete: a batch job over a
million inputs holds one part in memory, and an interrupted run keeps the inputs it
finished, beside a manifest that says the run is incomplete.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch

from rcdm_cli import __version__
from rcdm_cli.fileio import write_json
from rcdm_cli.imaging import to_pil
from rcdm_cli.inputs import load_image
from rcdm_cli.outputs import Overview, SampleLayout, write_input
from rcdm_cli.pipeline.sampling import SampleBatchProgress, check_fits_memory, load_noise, resolved_eta, sample_seed
from rcdm_cli.preprocessing import diffusion_target
from rcdm_cli.tensorfile import save_tensors

# At most this many samples are held in memory at once (about 200 MB at 128x128);
# --save-tensors keeps every sample, and so needs them all to fit.
STREAM_SAMPLES = 1024


@dataclass
class StreamProgress:
    """Where a streamed run is: inputs ``first``-``last`` (0-based, end excluded) of
    ``inputs`` are being sampled, ``done`` of ``total`` denoising steps are done."""

    first: int
    last: int
    inputs: int
    batch: SampleBatchProgress
    done: int
    total: int

    def describe(self) -> str:
        p = self.batch
        where = f"inputs {self.first + 1}-{self.last} of {self.inputs}"
        return f"{where}, batch {p.batch}/{p.batches}, step {p.step}/{p.steps}"


class SampleStream:
    """One ``sample`` run over ``images`` (paths) or ``reps`` (vectors), into ``layout``;
    with neither, over standard-normal vectors drawn from the seed, one per output name.

    Built before any weights load (it checks the memory a part needs and the noise
    file); :meth:`planned` lists every file it will write, for the overwrite check.
    ``inputs`` and ``noise_source`` are what the manifest records of the inputs.
    """

    def __init__(
        self,
        run,
        options,
        network_calls: int,
        layout: SampleLayout,
        *,
        images: list[Path] | None = None,
        reps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        save_tensors: bool = False,
        inputs: list[str] | dict | None = None,
        noise_source: str | None = None,
    ):
        self.run, self.options, self.network_calls, self.layout = run, options, network_calls, layout
        self.images, self.reps, self.save_tensors = list(images or []), reps, save_tensors
        self.inputs_record, self.noise_source = inputs, noise_source
        self.n = n = layout.n
        self.rows = rows = len(layout.names)
        per_part = rows if save_tensors else max(1, min(rows, STREAM_SAMPLES // n))
        check_fits_memory(per_part * n, run.meta.image_size, f"-n {n} for {per_part} input(s)")
        self.noise = load_noise(noise, n, run.meta.image_size) if noise is not None else None
        self.parts = [(a, min(rows, a + per_part)) for a in range(0, rows, per_part)]
        self._batches = [-(-(b - a) * n // options.batch_size) for a, b in self.parts]
        self.total_steps = sum(self._batches) * network_calls
        self.written: set[int] = set()  # inputs whose files are complete (their paths follow from the layout)
        self.timings = {"encode_seconds": 0.0, "sample_seconds": 0.0}
        self.overview = Overview(layout.overview_path, n) if layout.overview_path else None
        self._started: float | None = None

    def planned(self):
        return self.layout.planned(self.save_tensors)

    def load(self, loading: Callable[[str], ContextManager] = lambda what: nullcontext()) -> None:
        """Build (and download) the model, and the encoder for image inputs, each under
        ``loading(what)``; the run's clock starts here."""
        self._started = time.perf_counter()
        with loading(f"loading {self.run.spec}"):
            self.run.model  # noqa: B018
        if self.images:
            with loading(f"loading the encoder {self.run.plan.encoder}/{self.run.plan.layer}"):
                self.run.encoder  # noqa: B018

    def sample(
        self,
        progress: Callable[[StreamProgress], None] | None = None,
        on_first_part: Callable[[torch.Tensor], None] | None = None,
        on_input: Callable[[int], None] | None = None,
    ) -> dict:
        """Sample every part and write its files; returns the complete manifest, also
        written. ``on_first_part(reps)`` sees the first part's representations before
        it is sampled; ``on_input(j)`` follows the files of input ``j``. When stopped
        (an exception, Ctrl-C), the manifest of the finished inputs is written,
        marked incomplete, before the exception goes on."""
        if self._started is None:
            self._started = time.perf_counter()
        if self.reps is None and not self.images:  # random:K, drawn only now that every check has passed
            generator = torch.Generator().manual_seed(self.options.seed)
            self.reps = torch.randn(self.rows, self.run.meta.rep_dim, generator=generator)
        try:
            for (a, b), done_before in zip(self.parts, [sum(self._batches[:i]) for i in range(len(self.parts))]):
                part_reps, result = self._sample_part(a, b, done_before, progress, on_first_part, on_input)
        except BaseException:
            if self.written:
                write_json(self.layout.manifest_path, self.manifest(False))
            raise
        if self.save_tensors:  # one part: every sample is in this last result
            save_tensors(
                self.layout.tensors_path, {"samples": result.samples, "reps": part_reps}, {"rcdm": __version__}
            )
        if self.overview is not None:
            self.overview.save()
        final = self.manifest(True)
        write_json(self.layout.manifest_path, final)
        return final

    def _sample_part(self, a, b, done_before, progress, on_first_part, on_input):
        run, size = self.run, self.run.meta.image_size
        if self.images:
            pictures = [load_image(p) for p in self.images[a:b]]
            encode_start = time.perf_counter()
            part_reps = run.encode(pictures, self.options.batch_size)
            self.timings["encode_seconds"] += time.perf_counter() - encode_start
            shown = [to_pil(diffusion_target(im, size)) for im in pictures]
        else:
            part_reps, shown = self.reps[a:b], None
        if a == 0 and on_first_part is not None:
            on_first_part(part_reps)

        def write_row(j: int, row: torch.Tensor) -> None:
            write_input(self.layout, a + j, row, shown[j] if shown else None)
            if self.overview is not None:
                self.overview.add(self.layout.names[a + j], row, shown[j] if shown else None)
            self.written.add(a + j)
            if on_input is not None:
                on_input(a + j)

        def report(p: SampleBatchProgress) -> None:
            if progress is not None:
                done = (done_before + p.batch - 1) * p.steps + p.step
                progress(StreamProgress(a, b, self.rows, p, done, self.total_steps))

        result = run.sample(
            part_reps, self.n, self.options, noise=self.noise, on_row=write_row, first_row=a, progress=report
        )
        self.timings["sample_seconds"] += result.seconds
        return part_reps, result

    def manifest(self, complete: bool) -> dict:
        layout, n, seed, timings = self.layout, self.n, self.options.seed, self.timings
        return {
            "command": "sample",
            "rcdm_version": __version__,
            "complete": complete,
            "checkpoint": self.run.checkpoint_info(),
            "encoder": self.run.encoder_info(),
            "inputs": self.inputs_record,
            "n": n,
            "image_size": self.run.meta.image_size,
            "sampling": {
                **self.options.to_dict(),
                "eta": resolved_eta(self.options),
                "noise": self.noise_source,
                "network_calls": self.network_calls,
            },
            "device": str(self.run.device),
            "outputs": [
                {
                    "name": layout.names[j],
                    "grid": str(layout.grid_path(j)),
                    "samples": [str(layout.sample_path(j, k)) for k in range(n)],
                    "seeds": [sample_seed(seed, j, k) for k in range(n)],
                }
                for j in sorted(self.written)
            ],
            "overview": str(layout.overview_path) if layout.overview_path and complete else None,
            "tensors": str(layout.tensors_path) if self.save_tensors and complete else None,
            "timings": {
                "encode_seconds": round(timings["encode_seconds"], 3),
                "sample_seconds": round(timings["sample_seconds"], 3) if complete else None,
                "seconds_per_image": round(timings["sample_seconds"] / (self.rows * n), 4) if complete else None,
                "total_seconds": round(time.perf_counter() - self._started, 3),
            },
        }
