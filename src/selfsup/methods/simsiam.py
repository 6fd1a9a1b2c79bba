"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning").

One shared encoder f = backbone → projector and a predictor h; loss
``D(h(f(x1)), stopgrad(f(x2)))/2 + D(h(f(x2)), stopgrad(f(x1)))/2`` with D the negative cosine (Eq. 1-2).
No momentum encoder and no negatives: the stop-gradient and the predictor are what prevent collapse (the paper's
Fig. 2 shows collapse without the stop-gradient). Loss −1 is the minimum.

NN-SimSiam (solo-learn's variant, after NNCLR, Dwibedi et al. 2021): with ``nn_support_size > 0`` each target
projection is replaced by its nearest neighbour (cosine) in a support set of earlier view-1 projections
(:class:`~selfsup.components.nn_support.NearestNeighbourSupport`); ``nnsiam`` is SimSiam with that option on.
FastSiam (methods/fastsiam.py) is this class with more views and the mean of the other views as the target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..components.base import StepContext
from ..components.nn_support import NearestNeighbourSupport
from ..config_checks import QUEUE_CAP, checked, dim
from ..heads.mlp import mlp
from ..losses.distillation import negative_cosine
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class SimSiamConfig(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(2048)
    proj_layers: int = checked(3, ge=1, cap=16)  # the paper's ImageNet projector; 2 on CIFAR in the paper
    pred_hidden_dim: int = dim(512)  # the bottleneck of the predictor
    # > 0: NN-SimSiam's nearest-neighbour swap of the targets, with a support set of this many projections
    nn_support_size: int = checked(0, ge=0, cap=QUEUE_CAP, hint="0: off (SimSiam)")


@dataclass
class NNSiamConfig(SimSiamConfig):
    nn_support_size: int = checked(16384, ge=1, cap=QUEUE_CAP)  # 65,536 in solo-learn; see docs/distillation.md


@register_method("simsiam", help="SimSiam: predictor + stop-gradient, no momentum encoder (Chen & He 2021)")
class SimSiam(Method):
    Config = SimSiamConfig
    cfg: SimSiamConfig
    default_augment = "simclr"
    n_views: ClassVar[int | None] = 2  # FastSiam (a subclass) takes any number >= 3
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
        self.support = NearestNeighbourSupport(c.nn_support_size, c.proj_dim, option="method.nn_support_size") \
            if c.nn_support_size else None

    def check_batch(self, batch: ViewBatch) -> None:
        super().check_batch(batch)
        if self.support is not None:
            self.support.check_batch_size(batch.views[0].shape[0])

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        n = len(batch.views)
        h = self.backbone(torch.cat(batch.views))
        z = self.projector(h)
        p = self.predictor(z)
        zs, ps = list(z.chunk(n)), list(p.chunk(n))
        logs: dict[str, torch.Tensor] = {}
        if self.support is not None:  # NN-SimSiam: the targets' nearest neighbours in the support set
            zs, logs["nn_cos"] = self.support.swap(zs, batch.index)  # view 1's projections enter after the step
        return MethodOutput(loss=self.loss(ps, zs), logs=logs, embedding=h[: zs[0].shape[0]].detach())

    def loss(self, ps: list[torch.Tensor], zs: list[torch.Tensor]) -> torch.Tensor:
        """SimSiam's symmetrised loss of the two views' predictions ``ps`` and targets ``zs`` (each (B, D))."""
        (p1, p2), (z1, z2) = ps, zs
        return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)  # targets detached in the loss


@register_method("nnsiam", help="NN-SimSiam: SimSiam whose targets are their nearest neighbours in a support set "
                                "(solo-learn, after Dwibedi et al. 2021)")
class NNSiam(SimSiam):
    """SimSiam with ``nn_support_size`` on by default (NNCLR's nearest-neighbour swap of the targets)."""

    Config = NNSiamConfig
    cfg: NNSiamConfig
    test_overrides = {**SimSiam.test_overrides, "nn_support_size": 64}
