"""SimCLR (Chen et al. 2020): two augmented views, an MLP projection head, NT-Xent with in-batch negatives."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..components.base import StepContext
from ..components.gather import gather_with_grad
from ..config_checks import checked, dim
from ..heads.mlp import projection_head
from ..losses.contrastive import nt_xent
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class SimCLRConfig(MethodConfig):
    temperature: float = checked(0.2, gt=0)
    proj_hidden_dim: int = dim(512)
    proj_dim: int = dim(128)
    proj_layers: int = checked(2, ge=0, cap=16, hint="0: no head")  # 0: no head (the loss sees h), 1: linear, 2+: MLP


@register_method("simclr", help="SimCLR: NT-Xent over two views with in-batch negatives (Chen et al. 2020)")
class SimCLR(Method):
    """Representation h = backbone(x) is evaluated; z = g(h) feeds the loss (the head is discarded after)."""

    Config = SimCLRConfig
    cfg: SimCLRConfig
    default_augment = "simclr"
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    base_lr = 0.6
    default_weight_decay = 1e-4

    def __init__(self, backbone, cfg: SimCLRConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = (nn.Identity() if c.proj_layers == 0 else
                          projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, c.proj_layers))

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = torch.cat(batch.views)  # one backbone pass over both views (BN sees 2B samples)
        h = self.backbone(x)
        z = self.projector(h)
        z1, z2 = z.chunk(2)
        # negatives from every rank: the same global loss on each rank (see components/gather.py for the scaling)
        loss = self.contrast(gather_with_grad(z1), gather_with_grad(z2), batch)
        return MethodOutput(loss=loss, embedding=h[: z1.shape[0]].detach())

    def contrast(self, z1: torch.Tensor, z2: torch.Tensor, batch: ViewBatch) -> torch.Tensor:
        """The loss of the two views' projections z1, z2 (N, D), gathered from every rank: NT-Xent here; the
        methods that change only SimCLR's loss (DCL, SupCon) override this."""
        return nt_xent(z1, z2, self.cfg.temperature)
