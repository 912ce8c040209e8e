"""The official flag syntax: guided-diffusion's and RCDM's command-line flags
(``--image_size 128 --num_channels 256 ...``) read into a UNet and diffusion
configuration, and written back. A file-format concern, beside the official
checkpoint layout, so that the engine knows only its own configuration."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Iterable

from rcdm_cli.diffusion.config import DEFAULT_CHANNEL_MULT, DiffusionConfig, UNetConfig
from rcdm_cli.errors import UsageError

_MODEL_FLAGS = {
    "image_size": int,
    "num_channels": int,
    "num_res_blocks": int,
    "num_heads": int,
    "num_heads_upsample": int,
    "num_head_channels": int,
    "attention_resolutions": str,
    "channel_mult": str,
    "dropout": float,
    "class_cond": bool,
    "use_checkpoint": bool,
    "use_scale_shift_norm": bool,
    "resblock_updown": bool,
    "use_fp16": bool,
    "use_new_attention_order": bool,
}
_DIFFUSION_FLAGS = {
    "learn_sigma": bool,
    "diffusion_steps": int,
    "noise_schedule": str,
    "timestep_respacing": str,
    "use_kl": bool,
    "predict_xstart": bool,
    "rescale_timesteps": bool,
    "rescale_learned_sigmas": bool,
    "sigma_small": bool,
}
# RCDM's own flags that say which representation the model was trained on.
_REPRESENTATION_FLAGS = {"type_model": str, "use_head": bool, "feat_cond": bool, "ssl_dim": int}
# Training and sampling flags of the official scripts: accepted so that a whole command
# line can be pasted, but they do not describe the model.
_SCRIPT_FLAGS = {
    "batch_size", "microbatch", "lr", "weight_decay", "lr_anneal_steps", "ema_rate",
    "log_interval", "save_interval", "resume_checkpoint", "fp16_scale_growth",
    "schedule_sampler", "data_dir", "out_dir", "model_path", "num_samples", "num_images",
    "use_ddim", "clip_denoised", "name", "submitit", "local_rank", "dist_url", "G_shared",
    "no_shared", "nodes", "ngpus", "use_volta32", "timeout", "partition",
    "first_image_path", "second_image_path", "image_path", "folder_nn_path",
    "image_target_path", "dist", "comment",
}

# guided-diffusion's defaults, for flags a command line leaves out.
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
    "sigma_small": False,
}

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _parse_bool(flag: str, value: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise UsageError(f"--{flag} expects True or False, got {value!r}")


@dataclass(frozen=True)
class OfficialFlags:
    """What an official command line says: the model, the diffusion, and the encoder."""

    unet: UNetConfig
    diffusion: DiffusionConfig
    type_model: str | None = None
    use_head: bool | None = None
    ignored: tuple[str, ...] = ()


def _tokenize(flags: str | Iterable[str]) -> list[tuple[str, str | None]]:
    try:
        tokens = shlex.split(flags) if isinstance(flags, str) else list(flags)
    except ValueError as exc:  # an unbalanced quote
        raise UsageError(f"cannot split the flags: {exc} in {flags!r}") from None
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise UsageError(f"expected a flag such as --image_size, got {tok!r}")
        name = tok[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            pairs.append((name, value))
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            pairs.append((name, tokens[i + 1]))
            i += 2
        else:
            pairs.append((name, None))  # a bare switch such as --feat_cond
            i += 1
    return pairs


def parse_official_flags(flags: str | Iterable[str], rep_dim: int | None = None) -> OfficialFlags:
    """Turn guided-diffusion/RCDM flags (``--image_size 128 --num_channels 256 ...``)
    into a configuration, applying guided-diffusion's defaults for flags left out.

    ``rep_dim`` sets the conditioning width when the flags do not (``--ssl_dim``);
    the official scripts computed it by running the encoder.
    """
    values = dict(OFFICIAL_DEFAULTS)
    type_model: str | None = None
    use_head: bool | None = None
    feat_cond = True  # RCDM's scripts pass --feat_cond; without it the model ignores representations
    ignored: list[str] = []
    # A repeated flag takes its last value, as with the original scripts' argparse, so
    # that `$MODEL_FLAGS --num_channels 64` overrides.
    for name, raw in _tokenize(flags):
        kind = _MODEL_FLAGS.get(name) or _DIFFUSION_FLAGS.get(name) or _REPRESENTATION_FLAGS.get(name)
        if kind is None:
            if name in _SCRIPT_FLAGS:
                ignored.append(name)
                continue
            raise UsageError(
                f"--{name} is not a guided-diffusion/RCDM model or diffusion flag"
            )
        if raw is None:
            if kind is not bool:
                raise UsageError(f"--{name} needs a value")
            value: Any = True
        elif kind is bool:
            value = _parse_bool(name, raw)
        else:
            try:
                value = kind(raw)
            except ValueError:
                raise UsageError(f"--{name} expects {kind.__name__}, got {raw!r}") from None
        if name == "type_model":
            type_model = value
        elif name == "use_head":
            use_head = value
        elif name == "ssl_dim":
            rep_dim = value
        elif name == "feat_cond":
            feat_cond = value
        else:
            values[name] = value

    if values["class_cond"]:
        raise UsageError("--class_cond True describes a class-conditional ADM model, not an RCDM model")

    size = values["image_size"]
    if values["channel_mult"]:
        try:
            channel_mult = tuple(float(m) if "." in m else int(m) for m in values["channel_mult"].split(","))
        except ValueError:
            raise UsageError(f"--channel_mult expects numbers such as 1,1,2,3,4, got {values['channel_mult']!r}") from None
    elif size in DEFAULT_CHANNEL_MULT:
        channel_mult = DEFAULT_CHANNEL_MULT[size]
    else:
        raise UsageError(
            f"no default --channel_mult for image size {size}; give one, such as --channel_mult 1,2,2"
        )
    try:
        attention = tuple(int(r) for r in values["attention_resolutions"].split(",") if r.strip())
    except ValueError:
        raise UsageError(
            f"--attention_resolutions expects sizes such as 32,16,8, got {values['attention_resolutions']!r}"
        ) from None

    unet = UNetConfig(
        image_size=size,
        model_channels=values["num_channels"],
        num_res_blocks=values["num_res_blocks"],
        attention_resolutions=attention,
        channel_mult=channel_mult,
        num_heads=values["num_heads"],
        num_head_channels=values["num_head_channels"],
        num_heads_upsample=values["num_heads_upsample"],
        dropout=values["dropout"],
        use_scale_shift_norm=values["use_scale_shift_norm"],
        resblock_updown=values["resblock_updown"],
        use_new_attention_order=values["use_new_attention_order"],
        learn_sigma=values["learn_sigma"],
        rep_dim=rep_dim if feat_cond else None,
    )
    diffusion = DiffusionConfig(
        steps=values["diffusion_steps"],
        noise_schedule=values["noise_schedule"],
        learn_sigma=values["learn_sigma"],
        sigma_small=values["sigma_small"],
        predict_xstart=values["predict_xstart"],
        use_kl=values["use_kl"],
        rescale_learned_sigmas=values["rescale_learned_sigmas"],
        rescale_timesteps=values["rescale_timesteps"],
        timestep_respacing=values["timestep_respacing"],
    )
    return OfficialFlags(unet, diffusion, type_model, use_head, tuple(ignored))


def to_official_flags(unet: UNetConfig, diffusion: DiffusionConfig) -> str:
    """The flag string that describes this configuration to the original scripts."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, tuple):  # the scripts read channel_mult with int()
            return ",".join(str(int(x)) if float(x).is_integer() else str(x) for x in v)
        return str(v)

    pairs = [
        ("image_size", unet.image_size),
        ("num_channels", unet.model_channels),
        ("num_res_blocks", unet.num_res_blocks),
        ("channel_mult", unet.channel_mult),
        ("attention_resolutions", unet.attention_resolutions),
        ("num_heads", unet.num_heads),
        ("num_head_channels", unet.num_head_channels),
        ("num_heads_upsample", unet.num_heads_upsample),
        ("dropout", unet.dropout),
        ("use_scale_shift_norm", unet.use_scale_shift_norm),
        ("resblock_updown", unet.resblock_updown),
        ("use_new_attention_order", unet.use_new_attention_order),
        ("learn_sigma", diffusion.learn_sigma),
        ("diffusion_steps", diffusion.steps),
        ("noise_schedule", diffusion.noise_schedule),
        ("predict_xstart", diffusion.predict_xstart),
        ("use_kl", diffusion.use_kl),
        ("rescale_learned_sigmas", diffusion.rescale_learned_sigmas),
        ("rescale_timesteps", diffusion.rescale_timesteps),
    ]
    if diffusion.sigma_small:
        # not a flag of the scripts: their learn_sigma False means the large variance,
        # and sigma_small is set in code; say it rather than drop it
        pairs.append(("sigma_small", True))
    # an empty value (no attention resolutions) is quoted, so that it survives being
    # read back; the original scripts accept no such model (they int() every entry)
    return " ".join(f"--{k} {shlex.quote(fmt(v))}" for k, v in pairs)
