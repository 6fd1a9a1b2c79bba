"""I-JEPA's predictor (Assran et al. 2023): a narrow ViT that, from the context encoder's tokens, predicts the
representations at given target positions.

The context tokens are projected to the predictor's width and get the predictor's own fixed 2-D sin-cos position
embedding of their patch; every target position becomes a query: a learned mask token plus that position's
sin-cos embedding. Context and queries go through ``depth`` pre-norm blocks together; the queries' outputs, after
a norm and a projection back to the encoder's width, are the predictions. Leading prefix tokens (the encoder's
CLS token) take part as context tokens without a position embedding.
"""
from __future__ import annotations

import math
import typing

import torch
from torch import nn

from ..augment.masking import gather_tokens
from ..backbones.vit import Block, sincos_pos_embed


class PredictorViT(nn.Module):
    """``(context (B, P + K, D_enc), context_ids (B, K), target_ids (B, T), grid)`` → predictions (B, T, D_enc).

    ``dim`` (narrower than the encoder in I-JEPA: 384 for ViT-H), ``depth`` blocks of ``heads`` heads. Weights as
    in the authors' code: truncated-normal (std 0.02) linear layers and mask token, zero biases, and each block's
    output projections (attention and MLP) divided by √(2·layer).
    """

    def __init__(self, enc_dim: int, *, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"method.pred_depth must be >= 1, got {depth}")
        if dim % heads or dim % 4:
            raise ValueError(f"method.pred_dim ({dim}) must be divisible by 4 and by method.pred_heads ({heads})")
        self.dim = dim
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, enc_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            for i, blk in enumerate(typing.cast(list[Block], list(self.blocks))):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                typing.cast(nn.Linear, blk.mlp[2]).weight.div_(math.sqrt(2.0 * (i + 1)))

    def forward(self, context: torch.Tensor, context_ids: torch.Tensor, target_ids: torch.Tensor,
                grid: tuple[int, int], *, prefix: int = 1) -> torch.Tensor:
        """``context``: the encoder's output, ``prefix`` leading tokens (CLS) then the patches ``context_ids``
        (B, K) in that order; ``target_ids`` (B, T) the patch indices to predict (on ``grid``)."""
        if context.shape[1] != prefix + context_ids.shape[1]:
            raise ValueError(f"predictor: {context.shape[1]} context tokens for {prefix} prefix tokens and "
                             f"{context_ids.shape[1]} patch indices")
        x = self.embed(context)
        b, _, d = x.shape
        pos = sincos_pos_embed(d, grid, device=x.device).to(x.dtype).expand(b, -1, -1)  # (B, N, dim)
        patches = x[:, prefix:] + gather_tokens(pos, context_ids)
        queries = self.mask_token.to(x.dtype) + gather_tokens(pos, target_ids)
        t = torch.cat([x[:, :prefix], patches, queries], dim=1)
        for blk in self.blocks:
            t = blk(t)
        return self.proj(self.norm(t[:, t.shape[1] - target_ids.shape[1]:]))
