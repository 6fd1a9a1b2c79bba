"""AIM's prediction head (El-Nouby et al. 2024): residual MLP blocks applied to each patch token on its own.

The head keeps the trunk's width: ``depth`` pre-norm blocks ``x + MLP(LN(x))`` (GELU, expansion 4; AIM uses 12),
a final norm and a linear map to the ``p·p·C`` pixels of a patch. It never mixes tokens, so a prefix-causal
trunk stays causal through it. Discarded after pretraining.
"""
from __future__ import annotations

import torch
from torch import nn


class MLPBlock(nn.Module):
    """``x + MLP(LN(x))`` with hidden width ``ratio·dim``."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class PatchMLPHead(nn.Module):
    """(B, N, dim) tokens → (B, N, out_dim), token by token (``depth`` may be 0: norm and linear only)."""

    def __init__(self, dim: int, out_dim: int, *, depth: int = 2, ratio: float = 4.0) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"method.head_depth must be >= 0, got {depth}")
        self.blocks = nn.Sequential(*(MLPBlock(dim, ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.out = nn.Linear(dim, out_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.blocks(x)))
