"""DirectCLR (Jing et al. 2022, "Understanding Dimensional Collapse in Contrastive Self-supervised Learning"):
InfoNCE directly on the first d0 dimensions of the backbone's representation, with no projector.

The paper shows that a projector shields part of the representation from dimensional collapse, and that the
same effect is had without one by letting the loss see only a sub-vector r[:d0] of the representation r (the
rest is trained through the shared weights). The whole representation is evaluated. The loss is SimCLR's
NT-Xent over two views with negatives from every rank, τ 0.1 (the authors' value).

d0. The paper uses 360 of ResNet-50's 2048 features. Our backbones are far narrower (ResNet-18 at width 0.25
has 128 features), so an absolute 360 does not apply; the default keeps the paper's proportion,
``d0 = ceil(num_features · 360/2048)`` (23 of 128; 90 of a full-width ResNet-18's 512; 360 of 2048), which keeps
the share of the representation the loss constrains directly. ``sub_dim`` sets d0 outright.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..components.base import StepContext
from ..components.gather import gather_with_grad
from ..config_checks import DIM_CAP, checked
from ..errors import ConfigError
from ..losses.contrastive import nt_xent
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method

PAPER_FRACTION = 360 / 2048  # d0 / num_features of the paper's ResNet-50


@dataclass
class DirectCLRConfig(MethodConfig):
    temperature: float = checked(0.1, gt=0)
    sub_dim: int | None = checked(None, ge=1, cap=DIM_CAP, hint="None: ceil(sub_fraction · num_features)")
    sub_fraction: float = checked(PAPER_FRACTION, gt=0, le=1)  # used when sub_dim is None


def sub_dim_for(num_features: int, cfg: DirectCLRConfig) -> int:
    """d0 for a backbone with ``num_features`` features: ``cfg.sub_dim`` or the fraction's share (at least 1)."""
    if cfg.sub_dim is None:
        return max(1, math.ceil(num_features * cfg.sub_fraction - 1e-9))
    if cfg.sub_dim > num_features:
        raise ConfigError(f"method.sub_dim ({cfg.sub_dim}) exceeds the backbone's {num_features} features")
    return cfg.sub_dim


@register_method("directclr", help="DirectCLR: InfoNCE on a sub-vector of the representation, no projector "
                                   "(Jing et al. 2022)")
class DirectCLR(Method):
    """The backbone is evaluated (all of its features); the loss sees its first ``d0`` features."""

    Config = DirectCLRConfig
    cfg: DirectCLRConfig
    default_augment = "simclr"
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as SimCLR's
    base_lr = 0.6  # SimCLR's settings: the paper trains DirectCLR with SimCLR's recipe
    default_weight_decay = 1e-4

    def __init__(self, backbone, cfg: DirectCLRConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        self.sub_dim = sub_dim_for(backbone.num_features, self.cfg)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        h = self.backbone(torch.cat(batch.views))
        z1, z2 = h[:, : self.sub_dim].chunk(2)
        loss = nt_xent(gather_with_grad(z1), gather_with_grad(z2), self.cfg.temperature)
        return MethodOutput(loss=loss, embedding=h[: z1.shape[0]].detach())
