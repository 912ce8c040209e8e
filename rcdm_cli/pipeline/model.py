"""An RCDM ready to run: the UNet with its weights, the diffusion, and the metadata.

Also the ways of running the network faster (lower precision, channels-last memory,
torch.compile, CUDA graphs). Each is opt-in or limited to the device where it was
measured to pay, and each leaves the samplers' state in float32: only the network
call changes, so every sampler works unchanged on top of it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from rcdm_cli.checkpoint.metadata import CheckpointMeta
from rcdm_cli.checkpoint.resolve import ResolvedCheckpoint
from rcdm_cli.diffusion.gaussian import GaussianDiffusion
from rcdm_cli.diffusion.unet import UNet
from rcdm_cli.download_cache import Progress
from rcdm_cli.errors import UsageError

log = logging.getLogger("rcdm.model")

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --- precision ------------------------------------------------------------------------


def check_precision(precision: str, device: torch.device | str) -> None:
    """Refuse a precision the device cannot run, before any slow work."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
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


# --- the fast-path settings -------------------------------------------------------------------


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


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


class _GraphedCall:
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


# --- the model --------------------------------------------------------------------------------


class RCDMModel:
    def __init__(self, unet: UNet, meta: CheckpointMeta, device: torch.device, speed: Speed | None = None):
        self.unet = unet
        self.meta = meta
        self.device = torch.device(device)
        self.speed: Speed | None = None  # None: the plain float32 eager call, as released
        self._network: Callable = unet
        self._channels_last = False
        self._graphs: dict[tuple, _GraphedCall] = {}
        self._graphs_failed = False
        if speed is not None:
            self.accelerate(speed)

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: ResolvedCheckpoint,
        device: torch.device | str = "cpu",
        init_seed: int = 0,
        progress: Progress | None = None,
        speed: Speed | None = None,
    ) -> "RCDMModel":
        device = torch.device(device)
        state = ckpt.load(progress)
        if state is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                unet = UNet(ckpt.meta.unet)
        else:
            with torch.device("meta"):
                unet = UNet(ckpt.meta.unet)
            unet.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
        unet.eval().requires_grad_(False).to(device)
        return cls(unet, ckpt.meta, device, speed)

    @property
    def image_size(self) -> int:
        return self.meta.image_size

    @property
    def rep_dim(self) -> int | None:
        return self.meta.rep_dim

    def diffusion(self, steps: str | None = None) -> GaussianDiffusion:
        """The trained process respaced to ``steps`` (official syntax: 100, ddim25, ...)."""
        return GaussianDiffusion.from_config(self.meta.diffusion, respacing=steps or "")

    def accelerate(self, speed: Speed | None) -> None:
        """Run the network as ``speed`` says from now on; ``None`` restores the plain
        call. The same settings again do nothing (a compiled network is kept)."""
        if speed == self.speed:
            return
        if speed is not None:
            check_precision(speed.precision, self.device)
            if speed.precision == "bf16" and emulated_bf16(self.device):
                log.warning("this CPU has no native bfloat16: --precision bf16 will be much slower than fp32")
        channels_last = speed is not None and speed.wants_channels_last(self.device)
        if channels_last != self._channels_last:
            self.unet.to(memory_format=memory_format(channels_last))
            self._channels_last = channels_last
        compile_now = speed is not None and speed.compile
        if compile_now != isinstance(self._network, CompiledOrEager):
            self._network = CompiledOrEager(self.unet, dynamic=False) if compile_now else self.unet
        self._graphs.clear()
        self._graphs_failed = False
        self.speed = speed

    def forward(self, x: torch.Tensor, t: torch.Tensor, reps: torch.Tensor, *, graph_safe: bool = False) -> torch.Tensor:
        """The network's float32 output, whatever precision it ran in."""
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        precision = self.speed.precision if self.speed is not None else "fp32"
        with autocast(self.device, precision, cache=not graph_safe):
            out = self._network(x, t, reps)
        return out.float()

    def _graphed(self, x: torch.Tensor, t: torch.Tensor, reps: torch.Tensor) -> torch.Tensor | None:
        """The output through a captured CUDA graph, or None where graphs do not apply."""
        speed = self.speed
        if speed is None or not speed.cuda_graphs or not x.is_cuda or self._graphs_failed:
            return None
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype, tuple(reps.shape))
        call = self._graphs.get(key)
        if call is None:
            try:
                call = _GraphedCall(lambda a, b, c: self.forward(a, b, c, graph_safe=True), x, t, reps)
            except Exception as exc:  # noqa: BLE001 - capture is an optimisation; run eagerly
                self._graphs_failed = True
                log.warning("CUDA graph capture failed (%s: %s); sampling without graphs", type(exc).__name__, exc)
                return None
            self._graphs[key] = call
        return call(x, t, reps)

    def denoiser(self, reps: torch.Tensor, guidance: float = 1.0):
        """``model(x_t, t)`` with the representations bound, for the samplers.

        ``guidance`` W != 1 is classifier-free guidance on the representation: the
        prediction given the representation is pushed away from the prediction given
        the learned null representation, ``uncond + W (cond - uncond)``, both from one
        network call over the doubled batch. Only the mean's channels are combined; a
        learned variance is the conditional one. W = 1 is the plain call."""
        reps = reps.to(self.device)
        if self.speed is None:
            def call(x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                return self.unet(x, t, r)
        else:
            def call(x: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                out = self._graphed(x, t, r)
                return out if out is not None else self.forward(x, t, r)

        if guidance == 1.0:
            return lambda x, t: call(x, t, reps)
        both_reps = torch.cat([reps, self.unet.null_representations(reps.shape[0]).detach().to(reps.dtype)])
        channels = self.unet.config.in_channels

        def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            cond, uncond = call(torch.cat([x, x]), torch.cat([t, t]), both_reps).chunk(2)
            mean = uncond[:, :channels] + guidance * (cond[:, :channels] - uncond[:, :channels])
            return torch.cat([mean, cond[:, channels:]], dim=1)

        return guided
