"""The ways of running the network faster, shared by sampling and training.

Lower precision (autocast), channels-last memory, torch.compile with a way back to
eager, CUDA graphs. Each is opt-in or limited to the device where it was measured to
pay (docs/performance.md), and each changes only the network call: the samplers'
state, the loss and the optimizer stay float32. Sampling (``pipeline.model``) and
training (``training.loop``) both sit on this module, so one precision check decides
what either refuses.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from rcdm_cli.errors import UsageError

log = logging.getLogger("rcdm.acceleration")

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --- precision ------------------------------------------------------------------------


def check_precision(precision: str, device: torch.device | str | None = None, *, training: bool = False) -> None:
    """Refuse a precision the device cannot run, before any slow work; without a
    device, only the name is checked. fp16 needs a GPU; training in fp16 needs CUDA,
    as its loss scaling (``torch.amp.GradScaler("cuda")``) runs there only."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device is None:
        return
    device = torch.device(device)
    if precision == "fp16" and training and device.type != "cuda":
        raise UsageError(
            "--precision fp16 needs a GPU, and for training a CUDA one (its loss scaling runs there only); "
            "use bf16 or fp32 on this machine"
        )
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU has no bfloat16 support; use --precision fp16")


def emulated_bf16(device: torch.device | str) -> bool:
    """Whether bf16 on this device runs without hardware support: CPUs without
    AVX512-BF16 or AMX convert every element, which made bf16 matmuls about 70 times
    slower than fp32 ones on the 2-core AVX2 machine of docs/performance.md."""
    if torch.device(device).type != "cpu":
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return not bool(probe()) if probe is not None else True
    except RuntimeError:
        return True


def warn_if_emulated(precision: str, device: torch.device | str) -> None:
    """bf16 on a CPU that emulates it is allowed (it is correct), but the user asked
    for speed and gets the opposite: say so once, where the run is set up."""
    if precision == "bf16" and emulated_bf16(device):
        log.warning("this CPU has no native bfloat16: --precision bf16 will be much slower than fp32")


def autocast(device: torch.device | str, precision: str, *, cache: bool = True):
    """torch.autocast for ``bf16``/``fp16``, nothing for ``fp32``. Normalisation stays
    in float32 inside the UNet (GroupNorm32), as the released models were trained.
    ``cache=False`` is for CUDA-graph capture, which must not keep cast weights
    from outside the graph's memory pool."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision], cache_enabled=cache)


@contextlib.contextmanager
def exact_float32(device: torch.device | str, precision: str):
    """For ``fp32`` on CUDA, float32 arithmetic without TF32: PyTorch lets cuDNN
    convolutions round their inputs to TF32 (10-bit mantissas) by default, which
    would make GPU samples differ from CPU ones by far more than float rounding.
    Other precisions, and other devices, are left as they are."""
    if precision != "fp32" or torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --- memory layout --------------------------------------------------------------------


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


# --- torch.compile with a way back ------------------------------------------------------------


class CompiledOrEager:
    """A module's compiled form while it works, the module itself once it fails.

    torch.compile fails late (at the first call, sometimes at the first backward):
    a missing C compiler, an unsupported GPU, a graph the backend cannot lower. A
    failure is logged once and the run continues eagerly. An error that the eager
    module raises too (a wrong input) is the caller's, and propagates unchanged.
    """

    def __init__(self, module: nn.Module, compiler: Callable | None = None, **options):
        self.module = module
        self.compiled: Callable | None = None
        self.failure: str | None = None
        compiler = compiler or torch.compile
        try:
            self.compiled = compiler(module, **options)
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly
            self.give_up(exc)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def give_up(self, exc: BaseException) -> None:
        """Run eagerly from now on, saying once why."""
        self.compiled = None
        self.failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        log.warning("torch.compile failed (%s); continuing without compilation", self.failure)

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.module(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            result = self.module(*args, **kwargs)  # the caller's own error raises here
            self.give_up(exc)
            return result


# --- the settings and CUDA graphs -------------------------------------------------------------


@dataclass(frozen=True)
class Speed:
    """How the network runs. ``channels_last=None`` means on CUDA only: on the CPU
    measured (docs/performance.md) it slowed training and changed sampling by less
    than the machine's drift. CUDA graphs apply on CUDA only, one per input shape."""

    precision: str = "fp32"
    compile: bool = False
    channels_last: bool | None = None
    cuda_graphs: bool = True

    def wants_channels_last(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.channels_last is None else self.channels_last


class GraphedCall:
    """One network call captured as a CUDA graph: the inputs are copied into fixed
    buffers and the recorded kernels replayed, which removes the per-kernel launch
    cost that dominates a small batch. Valid for one input shape and dtype."""

    def __init__(self, call: Callable, x: torch.Tensor, t: torch.Tensor, reps: torch.Tensor):
        self.x, self.t, self.reps = x.clone(), t.clone(), reps.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: allocator, cuDNN plans, compilation
            for _ in range(3):
                call(self.x, self.t, self.reps)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = call(self.x, self.t, self.reps)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, reps: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.t.copy_(t)
        self.reps.copy_(reps)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites self.out
