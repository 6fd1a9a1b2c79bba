"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning").

One shared encoder f = backbone → projector and a predictor h; loss
``D(h(f(x1)), stopgrad(f(x2)))/2 + D(h(f(x2)), stopgrad(f(x1)))/2`` with D the negative cosine (Eq. 1-2).
No momentum encoder and no negatives: the stop-gradient and the predictor are what prevent collapse (the paper's
Fig. 2 shows collapse without the stop-gradient). Loss −1 is the minimum.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..components.base import StepContext
from ..config_checks import checked, dim
from ..heads.mlp import mlp
from ..losses.distillation import negative_cosine
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class SimSiamConfig(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(2048)
    proj_layers: int = checked(3, ge=1, cap=16)  # the paper's ImageNet projector; 2 on CIFAR in the paper
    pred_hidden_dim: int = dim(512)  # the bottleneck of the predictor


@register_method("simsiam", help="SimSiam: predictor + stop-gradient, no momentum encoder (Chen & He 2021)")
class SimSiam(Method):
    Config = SimSiamConfig
    cfg: SimSiamConfig
    default_augment = "simclr"
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    default_optimizer = "sgd"
    base_lr = 0.05
    default_weight_decay = 5e-4
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 64, "pred_hidden_dim": 16}

    def __init__(self, backbone, cfg: SimSiamConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        # BN on every layer of the projector, the output's included (non-affine here), as in the paper
        dims = [backbone.num_features] + [c.proj_hidden_dim] * (c.proj_layers - 1) + [c.proj_dim]
        self.projector = mlp(dims, norm="bn", last_norm="bn")
        self.predictor = mlp([c.proj_dim, c.pred_hidden_dim, c.proj_dim], norm="bn")

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        h = self.backbone(torch.cat(batch.views))
        z = self.projector(h)
        p = self.predictor(z)
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        loss = 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)  # targets detached in the loss
        return MethodOutput(loss=loss, embedding=h[: z1.shape[0]].detach())
