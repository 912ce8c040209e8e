"""Options that several commands share, defined once so that one name means one
thing everywhere (sample, interpolate, arith, attack, evaluate)."""

from __future__ import annotations

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
