"""Training and sampling speed of RCDM's execution modes, side by side.

    python bench/bench.py                      # CPU: the tiny preset, a few minutes
    python bench/bench.py --presets rcdm-128   # on a GPU: the released architecture

For every preset and mode: training images per second, the model FLOPs each image
costs (counted, not estimated), the share of the device's measured matmul peak
they reach, peak memory, and the seconds one 16-sample grid from one
representation takes with the fast sampler (DPM-Solver++(2M), 25 steps) and with
the original one (100 ancestral steps). Weights are random: speed does not depend
on them, and no download is needed.

A mode is a "+"-joined set of: fp32 | bf16 | fp16 (autocast precision), cl
(channels-last memory), compile (torch.compile), graphs (CUDA graphs around each
sampling step; CUDA only, sampling only), fused (fused AdamW on the CPU, as
``rcdm train`` now does; training only; on CUDA AdamW was always fused). The
baseline ``fp32`` is the original configuration: float32, eager, contiguous,
AdamW fused on CUDA only.

Timings are medians over repeated steps after warm-up. A measurement that would
exceed --budget seconds is cut short and extrapolated from the steps it did (every
step of a run has the same cost); the table marks those with "~".
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from rcdm_cli.acceleration import CompiledOrEager, Speed, autocast, emulated_bf16, memory_format
from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.diffusion import PRESETS, GaussianDiffusion, UNet, get_sampler, randn
from rcdm_cli.pipeline.model import RCDMModel
from rcdm_cli.training.ema import EMA

TOKENS = {"fp32", "bf16", "fp16", "cl", "compile", "graphs", "fused"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REP_DIM = 2048  # the released models' trunk width


# --- modes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str
    precision: str
    channels_last: bool
    compile: bool
    graphs: bool
    fused: bool

    @classmethod
    def parse(cls, spec: str) -> "Mode":
        tokens = spec.split("+")
        unknown = set(tokens) - TOKENS
        if unknown:
            raise SystemExit(f"unknown mode token(s) {', '.join(sorted(unknown))} in {spec!r}; use {', '.join(sorted(TOKENS))}")
        precisions = [t for t in tokens if t in DTYPES] or ["fp32"]
        if len(precisions) > 1:
            raise SystemExit(f"mode {spec!r} names more than one precision")
        return cls(spec, precisions[0], "cl" in tokens, "compile" in tokens, "graphs" in tokens, "fused" in tokens)

    @property
    def plain(self) -> bool:
        return self.precision == "fp32" and not (self.channels_last or self.compile or self.graphs or self.fused)

    @property
    def sampling_plain(self) -> bool:
        return self.precision == "fp32" and not (self.channels_last or self.compile or self.graphs)

    @property
    def training_key(self) -> tuple:
        """Graphs apply to sampling only: modes that differ by them train alike."""
        return (self.precision, self.channels_last, self.compile, self.fused)

    @property
    def sampling_key(self) -> tuple:
        """The optimizer does not sample: modes that differ by it sample alike."""
        return (self.precision, self.channels_last, self.compile, self.graphs)

    def speed(self) -> Speed | None:
        if self.sampling_plain:
            return None
        return Speed(precision=self.precision, compile=self.compile, channels_last=self.channels_last, cuda_graphs=self.graphs)


# --- measuring ----------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory while measuring, above the level at the start (what the measured
    mode itself holds: weights, optimizer state, activations): the CUDA allocator's
    record on a GPU; on the CPU the process's resident set, sampled every 5 ms."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def _release_freed() -> None:
        """Hand memory freed by earlier measurements back to the OS, so that it does not
        hide this measurement's growth (glibc keeps freed heap pages otherwise)."""
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/statm"):
            gc.collect()
            self._release_freed()
            self._base = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_bytes = max(self.peak_bytes, self._rss() - self._base)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()


def matmul_peak(device: torch.device, precision: str) -> float:
    """Best FLOP/s of a large square matmul in this precision: the ceiling the model's
    FLOP rate is compared with."""
    dtype = DTYPES[precision]
    if device.type == "cuda":
        n = 8192
    elif precision != "fp32" and emulated_bf16(device):
        n = 512  # emulated: about 1 GFLOP/s, keep it short
    else:
        n = 2048
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    best = float("inf")
    for _ in range(5 if device.type == "cpu" else 10):
        sync(device)
        start = time.perf_counter()
        for _ in range(1 if device.type == "cpu" else 10):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / (1 if device.type == "cpu" else 10))
    return 2 * n**3 / best


def model_flops(preset: str) -> tuple[float, float]:
    """FLOPs of one image through the UNet: (forward, forward + backward), counted on
    the meta device so that even the large presets cost nothing to count."""
    config = PRESETS[preset].unet.with_rep_dim(REP_DIM)
    with torch.device("meta"):
        unet = UNet(config)
        x = torch.zeros(1, 3, config.image_size, config.image_size)
        t = torch.zeros(1, dtype=torch.long)
        rep = torch.zeros(1, REP_DIM)
    with FlopCounterMode(display=False) as counter:
        unet(x, t, rep)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        unet(x, t, rep).square().mean().backward()
    return float(forward), float(counter.get_total_flops())


def timed(step, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def interleaved(steps: dict, device: torch.device, rounds: int, budget: float) -> dict:
    """Median seconds of each callable, run in turns: on a shared machine a slow minute
    then slows every mode alike instead of whichever was being measured. A callable
    stops taking turns once it has used up ``budget`` seconds."""
    times: dict = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            if times[key] and sum(times[key]) >= budget:
                continue
            times[key].append(timed(step, device))
    return {key: (statistics.median(ts), len(ts) < rounds) for key, ts in times.items()}


# --- training ------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    images_per_second: float
    step_seconds: float
    first_step_seconds: float
    peak_memory_bytes: int
    cut_short: bool
    compiled: bool | None = None


class TrainingStep:
    """The trainer's step: the hybrid loss through the UNet under autocast, backward,
    AdamW, the EMA update. No data loading (the feature cache removes the encoder,
    DataLoader workers hide the decoding)."""

    def __init__(self, preset: str, mode: Mode, device: torch.device, batch: int, args):
        config = PRESETS[preset].unet.with_rep_dim(REP_DIM)
        self.mode, self.device = mode, device
        self.diffusion = GaussianDiffusion.from_config(PRESETS[preset].diffusion)
        torch.manual_seed(0)
        self.unet = UNet(config, activation_checkpointing=args.activation_checkpointing).to(device)
        self.unet.to(memory_format=memory_format(mode.channels_last)).train()
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-4, fused=mode.fused or device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda") if mode.precision == "fp16" else None
        self.ema = EMA(self.unet, [0.9999])
        self.network = CompiledOrEager(self.unet, dynamic=False) if mode.compile else self.unet
        gen = torch.Generator().manual_seed(0)
        size = config.image_size
        self.x0 = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device)
        self.reps = torch.randn(batch, REP_DIM, generator=gen).to(device)
        self.noise = torch.randn(batch, 3, size, size, generator=gen).to(device)
        self.t = torch.randint(0, self.diffusion.num_timesteps, (batch,), generator=gen).to(device)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.mode.channels_last else x

    def __call__(self) -> None:
        with autocast(self.device, self.mode.precision):
            losses = self.diffusion.training_losses(
                lambda x, tt: self.network(self._layout(x), tt, self.reps), self.x0, self.t, noise=self.noise
            )
        loss = losses["loss"].mean()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.unet)


def bench_training(preset: str, modes: list[Mode], device: torch.device, batch: int, args) -> dict[tuple, TrainResult]:
    """Each distinct training mode: warm-up alone (its peak memory, its first step with
    any compilation), then timed steps in turns with the others."""
    steps, warm = {}, {}
    for mode in modes:
        if mode.training_key in steps:
            continue
        _log(args, f"{preset} {mode.name}: training at batch {batch}, warm-up")
        with PeakMemory(device) as memory:
            step = TrainingStep(preset, mode, device, batch, args)
            first = timed(step, device)
            for _ in range(args.warmup - 1):
                if first > args.budget / 4:  # slow (emulated bf16): its first step is warm-up enough
                    break
                step()
        steps[mode.training_key] = step
        warm[mode.training_key] = (first, memory.peak_bytes)
    _log(args, f"{preset}: {args.train_steps} timed training steps per mode, in turns")
    medians = interleaved(steps, device, args.train_steps, args.budget)
    results = {}
    for key, step in steps.items():
        seconds, cut = medians[key]
        compiled = step.network.active if isinstance(step.network, CompiledOrEager) else None
        results[key] = TrainResult(batch / seconds, seconds, warm[key][0], warm[key][1], cut, compiled)
    steps.clear()
    _free(device)
    return results


# --- sampling ------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


@dataclass
class SampleResult:
    seconds: float
    estimated: bool
    steps_timed: int


def _sampling_model(preset: str, device: torch.device) -> RCDMModel:
    preset_ = PRESETS[preset]
    torch.manual_seed(0)
    unet = UNet(preset_.unet.with_rep_dim(REP_DIM)).eval().requires_grad_(False).to(device)
    meta = CheckpointMeta(unet=preset_.unet.with_rep_dim(REP_DIM), diffusion=preset_.diffusion, source={"kind": "bench"})
    return RCDMModel(unet, meta, device)


def time_grid(model: RCDMModel, sampler: str, steps: str, grid: int, budget: float) -> SampleResult:
    """Seconds for ``grid`` samples of one representation, as ``rcdm sample`` draws
    them (one random stream per sample)."""
    diffusion = model.diffusion(steps)
    size = model.image_size
    generators = [torch.Generator().manual_seed(k) for k in range(grid)]
    reps = torch.randn(1, REP_DIM, generator=torch.Generator().manual_seed(0)).expand(grid, -1).contiguous()
    stamps: list[float] = []

    def tick(info: dict) -> None:
        sync(model.device)
        stamps.append(time.perf_counter())
        if stamps[-1] - start > budget and info["step"] < info["total"]:
            raise _Stop

    sync(model.device)
    start = time.perf_counter()
    try:
        x_T = randn((grid, 3, size, size), generators, model.device)
        get_sampler(sampler)(model.denoiser(reps), diffusion, x_T, generator=generators, callback=tick)
        sync(model.device)
        return SampleResult(time.perf_counter() - start, False, diffusion.num_timesteps)
    except _Stop:
        per_step = (stamps[-1] - start) / len(stamps)
        return SampleResult(per_step * diffusion.num_timesteps, True, len(stamps))


def bench_sampling(preset: str, modes: list[Mode], device: torch.device, args) -> dict[tuple, tuple]:
    """Per distinct sampling mode: (first-call seconds, fast grid, original grid or
    None). Fast grids are timed in turns over --rounds; the original once."""
    models, warm = {}, {}
    for mode in modes:
        if mode.sampling_key in models:
            continue
        _log(args, f"{preset} {mode.name}: sampling model, first call")
        model = _sampling_model(preset, device)
        model.accelerate(mode.speed())
        start = time.perf_counter()
        time_grid(model, "dpm++2m", "1", args.grid, budget=float("inf"))  # compilation, graph capture
        warm[mode.sampling_key] = time.perf_counter() - start
        models[mode.sampling_key] = model
    fast: dict = {key: [] for key in models}
    for r in range(args.rounds):
        _log(args, f"{preset}: {args.grid}-sample grids with dpm++2m {args.fast_steps}, round {r + 1}/{args.rounds}")
        for key, model in models.items():
            if fast[key] and fast[key][-1].estimated:  # too slow to repeat: one estimate will do
                continue
            fast[key].append(time_grid(model, "dpm++2m", args.fast_steps, args.grid, args.budget))
    originals = {m.sampling_key for m in modes if m.name in args.original_modes.split(",")}
    results = {}
    for key, model in models.items():
        slow = None
        if key in originals:
            _log(args, f"{preset}: {args.grid}-sample grid with ddpm {args.original_steps}")
            slow = time_grid(model, "ddpm", args.original_steps, args.grid, args.budget)
        best = sorted(fast[key], key=lambda res: res.seconds)[len(fast[key]) // 2]  # the median round
        results[key] = (warm[key], best, slow)
    models.clear()
    _free(device)
    return results


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Row:
    preset: str
    mode: str
    device: str
    train_batch: int
    flops_per_image_train: float
    flops_per_image_forward: float
    train: dict | None = None
    train_tflops: float | None = None
    train_peak_fraction: float | None = None
    train_speedup: float | None = None
    sample_fast: dict | None = None
    sample_original: dict | None = None
    sample_speedup: float | None = None
    sample_warmup_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def run(args) -> dict:
    device = torch.device(args.device)
    presets = args.presets or (["rcdm-128"] if device.type == "cuda" else ["tiny"])
    default_modes = (
        "fp32,bf16,bf16+cl,bf16+cl+graphs,bf16+cl+compile+graphs" if device.type == "cuda" else "fp32,fused,bf16+fused,cl+fused"
    )
    modes = [Mode.parse(m) for m in (args.modes or default_modes).split(",")]
    if device.type == "cpu" and any(m.precision == "fp16" for m in modes):
        raise SystemExit("fp16 autocast needs a GPU; leave it out of --modes on the CPU")
    peaks = {p: matmul_peak(device, p) for p in sorted({m.precision for m in modes})}
    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "matmul_peak_tflops": {p: v / 1e12 for p, v in peaks.items()},
        "date": time.strftime("%Y-%m-%d"),
    }
    rows: list[Row] = []
    for preset in presets:
        batch = args.train_batch or (32 if device.type == "cuda" else 16 if preset == "tiny" else 2)
        forward, train_flops = model_flops(preset)
        trained = {} if args.skip_train else bench_training(preset, modes, device, batch, args)
        sampled = {} if args.skip_sample else bench_sampling(preset, modes, device, args)
        base_train = next((trained[m.training_key] for m in modes if m.plain and m.training_key in trained), None)
        original = next((sampled[m.sampling_key][2] for m in modes if m.sampling_plain and m.sampling_key in sampled), None)
        for mode in modes:
            rows.append(_row(preset, mode, device, batch, forward, train_flops, peaks, trained, sampled, base_train, original))
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    return {"machine": machine, "settings": settings, "rows": [asdict(r) for r in rows]}


def _row(preset, mode, device, batch, forward, train_flops, peaks, trained, sampled, base_train, original) -> Row:
    row = Row(preset, mode.name, str(device), batch, train_flops, forward)
    if mode.precision == "bf16" and emulated_bf16(device):
        row.notes.append("bf16 emulated on this CPU")
    if mode.graphs and device.type != "cuda":
        row.notes.append("graphs: CUDA only, ignored")
    result = trained.get(mode.training_key)
    if result is not None:
        row.train = asdict(result)
        rate = train_flops * result.images_per_second
        row.train_tflops = rate / 1e12
        row.train_peak_fraction = rate / peaks[mode.precision]
        if base_train is not None:
            row.train_speedup = result.images_per_second / base_train.images_per_second
        if result.compiled is False:
            row.notes.append("compile failed: eager")
        elif mode.compile:
            row.notes.append(f"first train step {result.first_step_seconds:.0f} s")
        if result.cut_short:
            row.notes.append("train: fewer steps (budget)")
    if mode.sampling_key in sampled:
        warmup, fast, slow = sampled[mode.sampling_key]
        row.sample_warmup_seconds = warmup
        row.sample_fast = asdict(fast)
        row.sample_original = asdict(slow) if slow is not None else None
        if original is not None:
            row.sample_speedup = original.seconds / fast.seconds
        if mode.compile:
            row.notes.append(f"first sampling call {warmup:.0f} s")
    return row


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _log(args, message: str) -> None:
    if not args.json:
        print(f"  {message}", file=sys.stderr, flush=True)


# --- output -------------------------------------------------------------------------------------------------


def _num(value: float | None, fmt: str, estimated: bool = False) -> str:
    if value is None:
        return "-"
    return ("~" if estimated else "") + format(value, fmt)


HEADERS = ("preset", "mode", "batch", "train img/s", "x fp32", "TFLOP/s", "% peak", "train mem GiB",
           "grid s dpm++2m {fast}", "grid s ddpm {slow}", "x orig", "notes")


def table_rows(report: dict) -> list[list[str]]:
    rows = []
    for r in report["rows"]:
        train = r["train"] or {}
        fast, slow = r["sample_fast"] or {}, r["sample_original"] or {}
        tflops = r["train_tflops"]
        rows.append([
            r["preset"], r["mode"], str(r["train_batch"]),
            _num(train.get("images_per_second"), ".2f"),
            _num(r["train_speedup"], ".2f"),
            _num(tflops, ".4f" if tflops is not None and tflops < 1 else ".1f"),
            _num(None if r["train_peak_fraction"] is None else 100 * r["train_peak_fraction"], ".0f"),
            _num(None if not train else train["peak_memory_bytes"] / 2**30, ".2f"),
            _num(fast.get("seconds"), ".2f", fast.get("estimated", False)),
            _num(slow.get("seconds"), ".2f", slow.get("estimated", False)),
            _num(r["sample_speedup"], ".1f"),
            "; ".join(r["notes"]),
        ])
    return rows


def _header_lines(report: dict) -> tuple[str, str, list[str]]:
    m, settings = report["machine"], report["settings"]
    peaks = ", ".join(
        f"{p} {v * 1e3:.1f} GFLOP/s" if v < 1 else f"{p} {v:.0f} TFLOP/s" for p, v in m["matmul_peak_tflops"].items()
    )
    machine = f"{m['device']}, torch {m['torch']}, {m['threads']} threads / {m['cpus']} CPUs ({m['cpu_capability']}), {m['date']}"
    headers = [h.format(fast=settings["fast_steps"], slow=settings["original_steps"]) for h in HEADERS]
    flops = ", ".join(sorted({
        f"{r['preset']} {r['flops_per_image_train'] / 1e9:.1f} GFLOP per image per training step, "
        f"{r['flops_per_image_forward'] / 1e9:.1f} per network call" for r in report["rows"]
    }))
    return machine + "; measured matmul peak: " + peaks, "model FLOPs: " + flops, headers


def render(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=150)
    title, footer, headers = _header_lines(report)
    console.print(title)
    table = Table()
    for name in headers:
        table.add_column(name, justify="left" if name in ("preset", "mode", "notes") else "right")
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(footer)


def render_markdown(report: dict) -> None:
    title, footer, headers = _header_lines(report)
    lines = [title, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    print("\n".join(lines + ["", footer]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--presets", type=lambda s: s.split(","), default=None, help="comma-separated (default: tiny on CPU, rcdm-128 on CUDA)")
    p.add_argument("--modes", default=None, help="comma-separated modes, tokens joined by + (see the module docstring)")
    p.add_argument("--train-batch", type=int, default=None, help="images per training step (default: 32 on CUDA, 16 for tiny, 2 otherwise)")
    p.add_argument("--train-steps", type=int, default=8, help="timed training steps per mode (taken in turns)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first includes compilation)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--grid", type=int, default=16, help="samples per grid")
    p.add_argument("--fast-steps", default="25", help="DPM-Solver++(2M) steps")
    p.add_argument("--original-steps", default="100", help="ancestral (DDPM) steps of the original configuration")
    p.add_argument("--original-modes", default="fp32", help="modes in which the original sampler is timed too")
    p.add_argument("--rounds", type=int, default=3, help="fast-sampler grids per mode (taken in turns; the median counts)")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per measurement before it is cut short (training) or extrapolated (a grid)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-sample", action="store_true")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--show", metavar="REPORT.json", help="print the table of a report saved with --json, measuring nothing")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args(argv)
    for name in args.presets or []:
        if name not in PRESETS:
            p.error(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.show:
        with open(args.show) as f:
            report = json.load(f)
    else:
        report = run(args)
    if args.json and not args.show:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.markdown:
        render_markdown(report)
    else:
        render(report)


if __name__ == "__main__":
    main()
