"""Options that several commands share, defined once so that one name means one
thing everywhere (sample, interpolate, arith, attack, evaluate)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from rcdm_cli.cli.completion import complete_checkpoint, complete_encoder, complete_layer

CHECKPOINT = typer.Option(
    None, "--checkpoint", "-c",
    help="released:NAME, init:PRESET, an rcdm checkpoint file or a training run folder "
    "(default: the released model of --encoder/--layer).",
    autocompletion=complete_checkpoint,
)
ENCODER = typer.Option(
    None, "--encoder", "-e", help="Encoder (default: the one the checkpoint was trained on).", autocompletion=complete_encoder
)
LAYER = typer.Option(None, "--layer", "-l", help="Encoder layer (default: the checkpoint's).", autocompletion=complete_layer)
WEIGHTS = typer.Option(None, "--weights", help="A local file of the encoder's weights instead of the download.")
PREPROCESSING = typer.Option(
    None, "--preprocessing", help="native or rcdm, for models whose metadata does not fix it."
)
SAMPLER = typer.Option(
    "auto", "--sampler",
    help="ddpm (ancestral, as the original), ddim, dpm++2m or dpm++3m (ODE solvers). auto: dpm++2m with 8 steps "
    "(quad8) for models trained with rcdm (measured as faithful as the original's 100 steps), ddpm with 100 steps for the "
    "released models.",
)
STEPS = typer.Option(
    "auto", "--steps",
    help="Sampling steps: 100, ddim25 or 10,15,20 (the official respacing syntax), quad15 or logsnr10 (dense near "
    "t = 0). auto: the sampler's measured default.",
)
ETA = typer.Option(None, "--eta", help="DDIM noise (0 = deterministic; DDIM only).")
SEED = typer.Option(0, "--seed", help="Seed of every random stream of the run.")
BATCH = typer.Option(16, "--batch-size", "-b", help="Images per network call.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing output files.")
JSON = typer.Option(False, "--json", help="Print the manifest as JSON on stdout.")
PRECISION = typer.Option(
    "fp32", "--precision",
    help="Network precision: fp32 (as released), bf16 or fp16 (autocast; fp16 on GPUs only). "
    "On CUDA, bf16/fp16 also use channels-last memory and CUDA graphs. The sampler itself stays in fp32.",
)
COMPILE = typer.Option(
    False, "--compile", help="torch.compile the network (slow first call; falls back to eager with a warning if it fails).",
)
GUIDANCE = typer.Option(
    1.0, "--guidance",
    help="Representation guidance W: 1 samples the model as trained; W > 1 pushes the samples towards the "
    "representation (two network calls per step, batched). Needs a model trained with --cond-drop.",
)
WEIGHT_SET = typer.Option(
    None, "--weights-set",
    help="Which weights of a trained run to sample: ema (the moving average; the default) or model (the raw "
    "weights), or a named set such as ema-0.999.", show_default=False,
)


# --- the model and sampling block, added to a command's signature -----------------------


@dataclass(frozen=True)
class ModelChoice:
    """Which model a command samples, and the representation that conditions it."""

    checkpoint: Optional[str] | list[str] = None  # a list where a command repeats it (model_and_sampling's overrides)
    encoder: Optional[str] = None
    layer: Optional[str] = None
    weights: Optional[Path] = None
    preprocessing: Optional[str] = None
    weight_set: Optional[str] = None

    @property
    def names_an_encoder(self) -> bool:
        """Whether any option of the image encoder was given (meaningless for vectors)."""
        return any((self.encoder, self.layer, self.weights, self.preprocessing))


@dataclass(frozen=True)
class SamplingChoice:
    """How a command samples, as typed (``auto`` resolves per model)."""

    sampler: str = "auto"
    steps: str = "auto"
    eta: Optional[float] = None
    seed: int = 0
    batch_size: int = 16
    precision: str = "fp32"
    compile: bool = False
    guidance: float = 1.0

    def options(self):
        from rcdm_cli.pipeline.sampling import SamplingOptions

        return SamplingOptions(
            sampler=self.sampler, steps=self.steps, eta=self.eta, seed=self.seed, batch_size=self.batch_size,
            precision=self.precision, compile=self.compile, guidance=self.guidance,
        )


# parameter name -> (annotation, option, field of the choice)
_MODEL_PARAMS = {
    "checkpoint": (Optional[str], CHECKPOINT, "checkpoint"),
    "encoder": (Optional[str], ENCODER, "encoder"),
    "layer": (Optional[str], LAYER, "layer"),
    "weights": (Optional[Path], WEIGHTS, "weights"),
    "preprocessing": (Optional[str], PREPROCESSING, "preprocessing"),
    "weight_set": (Optional[str], WEIGHT_SET, "weight_set"),
}
_SAMPLING_PARAMS = {
    "sampler": (str, SAMPLER, "sampler"),
    "steps": (str, STEPS, "steps"),
    "eta": (Optional[float], ETA, "eta"),
    "seed": (int, SEED, "seed"),
    "batch_size": (int, BATCH, "batch_size"),
    "precision": (str, PRECISION, "precision"),
    "compile_": (bool, COMPILE, "compile"),
    "guidance": (float, GUIDANCE, "guidance"),
}


def model_and_sampling(command: Callable | None = None, **overrides: tuple[Any, Any]) -> Callable:
    """Give ``command`` the model and sampling options every sampling command shares.

    The command declares a ``model`` and a ``sampling`` parameter; Typer sees, in
    their places, the options they stand for (it reads ``__signature__``), and the
    command receives them gathered into a :class:`ModelChoice` and a
    :class:`SamplingChoice`. So each option is declared once, with one name, flag,
    help and default for every command, and shell completion sees plain options.

    A command whose meaning of one option differs says so by name:
    ``@model_and_sampling(checkpoint=(Optional[List[str]], CHECKPOINTS))`` (a
    repeatable ``--checkpoint``, for commands that compare models).
    """
    if command is None:
        return functools.partial(model_and_sampling, **overrides)
    unknown = set(overrides) - set(_MODEL_PARAMS) - set(_SAMPLING_PARAMS)
    if unknown:
        raise TypeError(f"no shared option named {', '.join(sorted(unknown))}")
    signature = inspect.signature(command, eval_str=True)
    blocks = {
        block: {name: (*overrides.get(name, entry[:2]), entry[2]) for name, entry in shared.items()}
        for block, shared in (("model", _MODEL_PARAMS), ("sampling", _SAMPLING_PARAMS))
    }
    missing = set(blocks) - set(signature.parameters)
    if missing:
        raise TypeError(f"{command.__name__} declares no {', '.join(sorted(missing))} parameter")
    params = []
    for param in signature.parameters.values():
        if param.name in blocks:
            params += [
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                for name, (annotation, option, _) in blocks[param.name].items()
            ]
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def wrapper(**kwargs):
        model = ModelChoice(**{field: kwargs.pop(name) for name, (_, _, field) in _MODEL_PARAMS.items()})
        sampling = SamplingChoice(**{field: kwargs.pop(name) for name, (_, _, field) in _SAMPLING_PARAMS.items()})
        return command(model=model, sampling=sampling, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)
    # Typer resolves annotations by name; the gathered parameters are not among them
    wrapper.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
    del wrapper.__wrapped__  # the signature above is the command line's, not the wrapped function's
    return wrapper
