"""Decoders for masked image modelling: MAE's light transformer decoder (He et al. 2022).

The decoder is deliberately separate from the encoder (own width, depth and heads, own fixed 2-D sin-cos position
embeddings, a learned mask token): MAE's asymmetric design keeps the encoder on the visible 25% of patches and
lets a narrow decoder do the reconstruction, which is discarded after pretraining.
"""
from __future__ import annotations

import torch
from torch import nn

from ..augment.masking import unshuffle
from ..backbones.vit import Block, sincos_pos_embed


class MAEDecoder(nn.Module):
    """Encoded visible tokens (B, 1 + K, D_enc) (CLS first) + ``ids_restore`` (B, N) → predictions (B, N, out_dim).

    Visible tokens are projected to ``dim``, mask tokens appended, the sequence unshuffled to raster order, the
    decoder's position embeddings added (for the grid given at call time), then ``depth`` pre-norm blocks, a norm
    and a linear prediction per patch (``out_dim`` = p·p·C pixels for MAE).
    """

    def __init__(self, enc_dim: int, out_dim: int, *, dim: int = 128, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"method.decoder_depth must be >= 1, got {depth}")
        if dim % heads or dim % 4:
            raise ValueError(f"method.decoder_dim ({dim}) must be divisible by 4 and by method.decoder_heads ({heads})")
        self.dim = dim
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(tokens)
        b, k1, d = x.shape
        n = ids_restore.shape[1]
        masks = self.mask_token.to(x.dtype).expand(b, n - (k1 - 1), d)
        patches = unshuffle(torch.cat([x[:, 1:], masks], dim=1), ids_restore)  # (B, N, dim), raster order
        pos = sincos_pos_embed(d, grid, device=x.device).to(x.dtype)
        x = torch.cat([x[:, :1], patches + pos], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]
