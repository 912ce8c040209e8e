"""The ADM UNet with representation conditioning, as in the released RCDM models.

The representation enters exactly once: ``ssl_emb`` (a Linear from ``rep_dim`` to
the embedding width) is added to the timestep embedding, and that sum conditions
every residual block through its scale and shift. The module tree reproduces the
official state-dict keys, so released checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from rcdm_cli.diffusion.config import UNetConfig
from rcdm_cli.diffusion.layers import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    GroupNorm32,
    ResBlock,
    Upsample,
    run_checkpointed,
    timestep_embedding,
    zero_module,
)


class UNet(nn.Module):
    """``UNet(config)(x, t, rep)`` predicts the noise (and, with learned sigma, the
    variance interpolation) for images ``x`` at timesteps ``t`` given representations
    ``rep`` of shape (batch, rep_dim)."""

    def __init__(self, config: UNetConfig, *, activation_checkpointing: bool = False):
        super().__init__()
        self.config = config
        self.activation_checkpointing = activation_checkpointing
        mc = config.model_channels
        emb_dim = 4 * mc
        attn_at = config.attention_downsample_rates
        heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if config.rep_dim is not None:
            self.ssl_emb = nn.Linear(config.rep_dim, emb_dim)
        if config.null_representation:
            # zeros: "no representation" starts as the projection's bias alone
            self.null_rep = nn.Parameter(torch.zeros(config.rep_dim))

        def res(ch_in: int, ch_out: int, **kw) -> ResBlock:
            return ResBlock(ch_in, emb_dim, config.dropout, ch_out, config.use_scale_shift_norm, **kw)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, config.num_head_channels, config.use_new_attention_order)

        ch = input_ch = int(config.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        ds = 1
        last_level = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in attn_at:
                    layers.append(attn(ch, config.num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != last_level:
                down = res(ch, ch, down=True) if config.resblock_updown else Downsample(ch, True)
                self.input_blocks.append(EmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, config.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                skip = skip_channels.pop()
                layers = [res(ch + skip, int(mc * mult))]
                ch = int(mc * mult)
                if ds in attn_at:
                    layers.append(attn(ch, heads_up))
                if level and i == config.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if config.resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), zero_module(nn.Conv2d(input_ch, config.out_channels, 3, padding=1))
        )

    @property
    def rep_dim(self) -> int | None:
        return self.config.rep_dim

    def null_representations(self, n: int) -> torch.Tensor:
        """``n`` copies of the learned null representation (a model trained with
        conditioning dropout)."""
        if not self.config.null_representation:
            raise ValueError("this UNet has no null representation (it was trained without conditioning dropout)")
        return self.null_rep.expand(n, -1)

    def drop_representations(self, rep: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """``rep`` with the rows where ``drop`` is true replaced by the null
        representation; the null vector takes part in the graph even when no row is
        dropped, so that every process of a distributed run computes its gradient."""
        return torch.where(drop[:, None], self.null_representations(rep.shape[0]).to(rep.dtype), rep)

    def embed(self, timesteps: torch.Tensor, rep: torch.Tensor | None) -> torch.Tensor:
        """The embedding every residual block is conditioned on."""
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels))
        if self.config.rep_dim is not None:
            if rep is None:
                raise ValueError("this UNet is representation-conditional: pass rep")
            if rep.shape[-1] != self.config.rep_dim:
                raise ValueError(
                    f"representation has {rep.shape[-1]} values, the model expects {self.config.rep_dim}"
                )
            emb = emb + self.ssl_emb(rep.to(emb.dtype))
        elif rep is not None:
            raise ValueError("this UNet is unconditional: rep must be None")
        return emb

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, rep: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(timesteps, rep)
        ckpt = self.activation_checkpointing and self.training and torch.is_grad_enabled()

        def run(block: EmbedSequential, h: torch.Tensor) -> torch.Tensor:
            return run_checkpointed(block, h, emb) if ckpt else block(h, emb)

        skips = []
        h = x
        for block in self.input_blocks:
            h = run(block, h)
            skips.append(h)
        h = run(self.middle_block, h)
        for block in self.output_blocks:
            h = run(block, torch.cat([h, skips.pop()], dim=1))
        return self.out(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
