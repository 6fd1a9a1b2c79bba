"""DINO heads for the [CLS] token and the patch tokens (iBOT, Zhou et al. 2022; DINOv2, Oquab et al. 2024).

``mode`` says what the two share:

- ``shared``: one :class:`~selfsup.heads.dino.DINOHead` for both (the iBOT paper's default: a shared projection
  head for [CLS] and patch tokens; both distributions then live over the same K prototypes);
- ``last-layer``: a shared MLP, a weight-normalised last layer of its own for the patches (iBOT's code with
  ``shared_head false``: ``last_layer2``);
- ``separate``: two independent heads (DINOv2: "untying the head weights" between the DINO and iBOT losses).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .dino import DINOHead
from .prototypes import WeightNormLinear

HEAD_MODES = ("shared", "last-layer", "separate")


class TokenHeads(nn.Module):
    patch_head: DINOHead | None
    patch_last: WeightNormLinear | None

    def __init__(self, in_dim: int, out_dim: int, patch_out_dim: int, hidden_dim: int, bottleneck_dim: int,
                 layers: int, *, mode: str = "shared", norm_last_layer: bool = True, use_bn: bool = False) -> None:
        super().__init__()
        if mode not in HEAD_MODES:
            raise ConfigError(f"method.patch_head must be one of {', '.join(HEAD_MODES)}, got {mode!r}")
        if mode == "shared" and patch_out_dim != out_dim:
            raise ConfigError(f"method.patch_out_dim ({patch_out_dim}) must equal method.out_dim ({out_dim}) with "
                              "method.patch_head=shared (one head for both)")
        self.mode = mode
        self.cls_head = DINOHead(in_dim, out_dim, hidden_dim, bottleneck_dim, layers, use_bn=use_bn,
                                 norm_last_layer=norm_last_layer)
        self.patch_head = (DINOHead(in_dim, patch_out_dim, hidden_dim, bottleneck_dim, layers, use_bn=use_bn,
                                    norm_last_layer=norm_last_layer) if mode == "separate" else None)
        self.patch_last = (WeightNormLinear(bottleneck_dim, patch_out_dim, learn_gain=not norm_last_layer)
                           if mode == "last-layer" else None)

    def cls(self, x: torch.Tensor, *, freeze_last_layer: bool = False) -> torch.Tensor:
        """(R, in_dim) [CLS] tokens → (R, out_dim) logits."""
        return self.cls_head(x, freeze_last_layer=freeze_last_layer)

    def patch(self, x: torch.Tensor, *, freeze_last_layer: bool = False) -> torch.Tensor:
        """(R, in_dim) patch tokens → (R, patch_out_dim) logits."""
        if self.patch_head is not None:
            return self.patch_head(x, freeze_last_layer=freeze_last_layer)
        if self.patch_last is not None:
            return self.patch_last(F.normalize(self.cls_head.mlp(x), dim=-1), frozen=freeze_last_layer)
        return self.cls_head(x, freeze_last_layer=freeze_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(x)
