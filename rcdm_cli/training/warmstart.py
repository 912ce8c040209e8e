"""Starting a run from another RCDM's weights, and training its conditioning first.

An RCDM for a new representation shares almost everything with one trained for
another: denoising natural images is the same job whatever conditions it. So the new
run takes the parent's UNet whole, and re-learns only what is tied to the old
representation. The representation's projection (``ssl_emb``) is kept when the widths
match (it is then a starting point like any other, and the conditioning-only phase
re-fits it quickly) and re-initialised when they differ, because a matrix from
another width has no meaning for the new vectors. A null representation (conditioning
dropout) is kept under the same rule, and starts at zero when the parent has none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from rcdm_cli.checkpoint.hashing import file_sha256
from rcdm_cli.checkpoint.resolve import ResolvedCheckpoint, resolve_checkpoint
from rcdm_cli.diffusion.config import DiffusionConfig, UNetConfig
from rcdm_cli.errors import RcdmError, UsageError

# Settings that may differ between a parent and its child: the representation's
# width (the projection is re-initialised) and whether a null representation exists.
CHILD_MAY_CHANGE = ("rep_dim", "null_representation")
PROJECTION = ("ssl_emb.", "null_rep")


@dataclass
class Parent:
    spec: str
    checkpoint: ResolvedCheckpoint

    def record(self) -> dict:
        """What the child's checkpoints say of their parent: enough to find it again
        and to know it is the same file."""
        path = self.checkpoint.path
        return {
            "name": self.spec,
            "sha256": file_sha256(path) if path is not None and path.exists() else None,
            "description": self.checkpoint.meta.describe(),
            "step": self.checkpoint.meta.step,
        }


def differences(parent_unet: UNetConfig, parent_diffusion: DiffusionConfig, unet: UNetConfig, diffusion: DiffusionConfig) -> list[str]:
    """Every architecture or diffusion setting in which the child differs from its
    parent, beyond those a child may change."""
    found = []
    for f in dataclasses.fields(UNetConfig):
        if f.name in CHILD_MAY_CHANGE:
            continue
        theirs, ours = getattr(parent_unet, f.name), getattr(unet, f.name)
        if theirs != ours:
            found.append(f"{f.name} {_show(theirs)} (this run: {_show(ours)})")
    for f in dataclasses.fields(DiffusionConfig):
        if f.name == "timestep_respacing":
            continue
        theirs, ours = getattr(parent_diffusion, f.name), getattr(diffusion, f.name)
        if theirs != ours:
            found.append(f"diffusion {f.name} {_show(theirs)} (this run: {_show(ours)})")
    return found


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def resolve_parent(spec: str, unet: UNetConfig, diffusion: DiffusionConfig) -> Parent:
    """The checkpoint ``--init`` names, refused (before any download) when its
    architecture or diffusion differs from the run's."""
    if spec.startswith("init:"):
        raise UsageError("--init starts from trained weights: give released:NAME, a checkpoint file or a run folder")
    checkpoint = resolve_checkpoint(spec)
    found = differences(checkpoint.meta.unet, checkpoint.meta.diffusion, unet, diffusion)
    if found:
        raise UsageError(
            f"--init {spec} has another architecture than this run: {'; '.join(found)}; "
            "train with the parent's preset or --flags"
        )
    if checkpoint.meta.unet.rep_dim is None:
        raise UsageError(f"--init {spec} is an unconditional model; RCDM starts from a representation-conditional one")
    return Parent(spec, checkpoint)


def load_parent(model: nn.Module, parent: Parent) -> list[str]:
    """Copy the parent's weights into ``model``; returns the names of what was
    re-initialised instead (none when the representation widths match)."""
    state = parent.checkpoint.load()
    if state is None:
        raise RcdmError(f"--init {parent.spec} holds no weights")
    own = model.state_dict()
    reinitialised = [k for k in own if k.startswith(PROJECTION) and (k not in state or state[k].shape != own[k].shape)]
    kept = {k: v for k, v in state.items() if k in own and k not in reinitialised}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    wrong = [k for k in missing if k not in reinitialised] + [k for k in unexpected]
    if wrong:  # the architecture check makes this a corrupt parent, not a user mistake
        raise RcdmError(f"--init {parent.spec}: its weights do not fit its own description ({', '.join(wrong[:4])})")
    return reinitialised


def conditioning_path(model: nn.Module, layers: str) -> list[str]:
    """The parameters that ``--conditioning-only`` trains: the projection of the
    representation (and the null representation), and with ``embeddings`` also the
    timestep embedding and every block's embedding layer, which turn the embedding
    into each block's scale and shift."""
    names = []
    for name, _ in model.named_parameters():
        if name.startswith(PROJECTION):
            names.append(name)
        elif layers == "embeddings" and (name.startswith("time_embed.") or ".emb_layers." in name):
            names.append(name)
    return names


def set_trainable(model: nn.Module, names: list[str] | None) -> None:
    """Only ``names`` learn (None: every parameter)."""
    chosen = None if names is None else set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(chosen is None or name in chosen)


def drop_frozen_gradients(model: nn.Module, names: list[str]) -> None:
    """Forget the gradients of every parameter outside ``names``, so that the
    optimizer leaves it untouched (no step, no weight decay, no moments)."""
    chosen = set(names)
    for name, p in model.named_parameters():
        if name not in chosen:
            p.grad = None
