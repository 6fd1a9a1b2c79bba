"""Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction").

backbone → 3-layer projector (2048-2048-2048 here; 8192 in the paper) on both views; the cross-correlation of
the batch-standardised embeddings is pushed to the identity (:func:`barlow_twins_loss`, λ = 5e-3).
What prevents collapse: the diagonal term keeps every dimension informative (a collapsed dimension has zero
variance and cannot correlate to 1), the off-diagonal term decorrelates dimensions. No EMA, no predictor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..components.base import StepContext
from ..components.gather import gather_with_grad
from ..config_checks import checked, dim
from ..heads.mlp import projection_head
from ..losses.redundancy import barlow_twins_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method

if TYPE_CHECKING:
    from .vicreg import VICRegConfig


@dataclass
class BarlowTwinsConfig(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(2048)
    proj_layers: int = checked(3, ge=1, cap=16)
    lambd: float = checked(5e-3, ge=0)  # off-diagonal weight λ
    # multiplies the loss. The paper (scale 1) gives biases and norms a 40x smaller lr than the weights; our LARS
    # excludes them from adaptation but uses one lr, and the loss is in the thousands: 0.1 (solo-learn's CIFAR
    # value) keeps their raw-gradient steps moderate. Adaptive optimizers (LARS weights, AdamW) ignore the scale.
    scale_loss: float = checked(0.1, gt=0)


class ProjectedPairMethod(Method):
    """Shared body of the redundancy-reduction methods (Barlow Twins, VICReg): one backbone pass over both
    views, one projector built from the config's ``proj_hidden_dim``/``proj_dim``/``proj_layers``."""

    n_views = 2
    cfg: BarlowTwinsConfig | VICRegConfig

    def __init__(self, backbone, cfg=None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, c.proj_layers)

    def project(self, batch: ViewBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h of the first view (B, D), z1 (B, P), z2 (B, P)) of this rank's batch."""
        h = self.backbone(torch.cat(batch.views))
        z1, z2 = self.projector(h).chunk(2)
        return h[: z1.shape[0]], z1, z2


@register_method("barlow-twins", help="Barlow Twins: cross-correlation of two views pushed to identity (Zbontar et al. 2021)")
class BarlowTwins(ProjectedPairMethod):
    Config = BarlowTwinsConfig
    cfg: BarlowTwinsConfig
    default_augment = "byol"
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    default_optimizer = "lars"
    base_lr = 0.3
    default_weight_decay = 1e-4
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 64}

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        h1, z1, z2 = self.project(batch)
        # the cross-correlation over the global batch, identical on every rank (components/gather.py: scaling)
        loss = self.cfg.scale_loss * barlow_twins_loss(gather_with_grad(z1), gather_with_grad(z2), self.cfg.lambd)
        return MethodOutput(loss=loss, embedding=h1.detach())
