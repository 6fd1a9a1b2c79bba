"""Classic metric-learning losses as a self-supervised method: two augmented views are a positive pair, the other
images of the batch are the negatives (``--set loss=contrastive|triplet|npair|infonce``).

- ``contrastive``: Chopra, Hadsell & LeCun 2005 margin loss on pairs (L2-normalised embeddings; margin 1.0).
- ``triplet``: Schroff et al. 2015 (FaceNet) on squared distances of L2-normalised embeddings (margin 0.2), with
  ``mining=semi-hard`` (FaceNet), ``batch-hard`` (Hermans et al. 2017) or ``all``.
- ``npair``: Sohn 2016 multi-class N-pair loss on unnormalised embeddings with an L2 penalty (``l2_reg``).
- ``infonce``: Oord et al. 2018 InfoNCE with explicit negatives: view 1 of image i against view 2 of every image
  (no same-view negatives, unlike NT-Xent), temperature ``temperature``.

Every loss is applied in both directions (view 1 as anchors, then view 2) and averaged. Under torchrun the
embeddings of every rank are gathered (with gradients), so the negatives are the global batch's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..components.base import StepContext
from ..components.gather import gather_with_grad
from ..config_checks import checked, dim
from ..heads.mlp import projection_head
from ..losses.contrastive import info_nce
from ..losses.metric import TRIPLET_MINING, margin_contrastive_loss, npair_loss, triplet_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method

METRIC_LOSSES = ("contrastive", "triplet", "npair", "infonce")
DEFAULT_MARGIN = {"contrastive": 1.0, "triplet": 0.2}


@dataclass
class MetricConfig(MethodConfig):
    loss: str = checked("infonce", choices=METRIC_LOSSES)  # contrastive | triplet | npair | infonce
    margin: float | None = checked(None, ge=0)  # None: 1.0 for contrastive, 0.2 for triplet
    mining: str = checked("semi-hard", choices=TRIPLET_MINING)  # triplet only: semi-hard | batch-hard | all
    temperature: float = checked(0.2, gt=0)  # infonce only
    l2_reg: float = checked(0.002, ge=0)  # npair only
    proj_hidden_dim: int = dim(512)
    proj_dim: int = dim(128)
    proj_layers: int = checked(2, ge=1, cap=16)


@register_method("metric", help="metric learning on view pairs: contrastive, triplet, N-pair or InfoNCE loss")
class MetricLearning(Method):
    """The backbone is evaluated; the projection head feeds the loss."""

    Config = MetricConfig
    cfg: MetricConfig
    default_augment = "simclr"
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as SimCLR
    base_lr = 0.3
    default_weight_decay = 1e-4

    def __init__(self, backbone, cfg: MetricConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, c.proj_layers)

    def pair_loss(self, a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The configured loss with anchors a (B, D) and positives p (B, D) (projections, not yet normalised)."""
        c = self.cfg
        if c.loss == "npair":
            return npair_loss(a, p, c.l2_reg)
        a, p = F.normalize(a.float(), dim=1), F.normalize(p.float(), dim=1)
        margin = c.margin if c.margin is not None else DEFAULT_MARGIN.get(c.loss, 0.0)
        if c.loss == "contrastive":
            return margin_contrastive_loss(a, p, margin)
        if c.loss == "triplet":
            return triplet_loss(a, p, margin, c.mining)
        return info_nce(a, p, torch.arange(a.shape[0], device=a.device), c.temperature)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        h = self.backbone(torch.cat(batch.views))  # one pass over both views, as SimCLR
        z1, z2 = self.projector(h).chunk(2)
        # negatives from every rank: the same global loss on each rank (components/gather.py explains the scaling)
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        loss = 0.5 * (self.pair_loss(z1, z2) + self.pair_loss(z2, z1))
        return MethodOutput(loss=loss, embedding=h[: z1.shape[0]].detach())
