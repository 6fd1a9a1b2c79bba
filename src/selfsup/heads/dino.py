"""The DINO projection head (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

``x (B, in_dim) → MLP (GELU, hidden, hidden) → bottleneck (B, bottleneck_dim) → L2-normalise →
weight-normalised linear → logits (B, out_dim)``. The large ``out_dim`` (65536 in the paper; 4096 is plenty for
CIFAR-sized data) is the number of soft "classes" the teacher's sharpened softmax assigns images to. With
``norm_last_layer`` the last layer's gain is fixed to 1 (the paper's stabler choice); otherwise it is learnt.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .mlp import mlp
from .prototypes import WeightNormLinear


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, *, use_bn: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        if out_dim < 2:
            raise ConfigError(f"method.out_dim must be >= 2, got {out_dim}")
        if layers < 1:
            raise ConfigError(f"method.head_layers must be >= 1, got {layers}")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        self.mlp = mlp(dims, norm="bn" if use_bn else None, act=nn.GELU)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_gain=not norm_last_layer)

    def forward(self, x: torch.Tensor, *, freeze_last_layer: bool = False) -> torch.Tensor:
        """x: (B, in_dim) → logits (B, out_dim); ``freeze_last_layer`` stops gradients into the last layer."""
        z = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(z, frozen=freeze_last_layer)
