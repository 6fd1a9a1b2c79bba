"""Weight-normalised linear layers: SwAV's prototypes and the last layer of the DINO head.

Each output unit ``k`` has a direction ``v_k``; the layer computes ``g_k · <x, v_k / ||v_k||>`` (Salimans & Kingma
2016). With the gain fixed to 1 the outputs are cosine similarities to unit-norm prototypes when ``x`` is
L2-normalised (SwAV normalises its prototypes after every step; computing with ``v / ||v||`` is the same thing
without an in-place edit of the weights).

Both papers freeze this layer for the first epoch: ``forward(x, frozen=True)`` uses detached weights so no
gradient reaches them (and optimizers skip a parameter whose ``grad`` is None, weight decay included).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class WeightNormLinear(nn.Module):
    """``in_dim → out_dim`` without bias, rows of the weight normalised; ``learn_gain`` adds a per-row gain."""

    def __init__(self, in_dim: int, out_dim: int, *, learn_gain: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.gain = nn.Parameter(torch.ones(out_dim)) if learn_gain else None

    @property
    def out_dim(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor, *, frozen: bool = False) -> torch.Tensor:
        """x: (B, in_dim) → (B, out_dim). ``frozen``: no gradient reaches this layer's parameters."""
        w = self.weight.detach() if frozen else self.weight
        w = F.normalize(w, dim=1)
        if self.gain is not None:
            g = self.gain.detach() if frozen else self.gain
            w = w * g[:, None]
        return F.linear(x, w.to(x.dtype))


class Prototypes(WeightNormLinear):
    """SwAV's K prototypes (Caron et al. 2020): scores (B, K) = cosine of the normalised embedding to each one."""

    def __init__(self, dim: int, count: int) -> None:
        if count < 2:
            raise ConfigError(f"method.n_prototypes must be >= 2, got {count}")
        super().__init__(dim, count, learn_gain=False)
