"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): an online network predicts an EMA target's projection.

online: backbone → projector → predictor (p);  target: EMA copy of backbone → projector (z, stop-gradient).
Loss: ``normalized_mse(p1, z2) + normalized_mse(p2, z1)`` (symmetric, Eq. 2). The target's momentum τ follows
a cosine schedule from ``momentum_base`` (0.996) to ``momentum_final`` (1), applied by the engine after each step.

What prevents collapse: the predictor, the stop-gradient and the slowly moving target — and, in practice, batch
norm in the heads (Fetterman & Albrecht 2020; the seeds' experiment). ``bn_in_heads=false`` removes it to show
the collapse (``benchmarks/byol_collapse.py``).

NN-BYOL (solo-learn's variant, after NNCLR, Dwibedi et al. 2021): with ``nn_support_size > 0`` each target
projection is replaced by its nearest neighbour (cosine) in a support set of earlier target projections of
view 1 (:class:`~selfsup.components.nn_support.NearestNeighbourSupport`); ``nnbyol`` is BYOL with that option
on. With the option off (``byol``'s default) nothing is built and the computation is BYOL's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.nn_support import NearestNeighbourSupport
from ..components.schedules import Cosine
from ..config_checks import QUEUE_CAP, checked, dim
from ..heads.mlp import projection_head
from ..losses.distillation import normalized_mse
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class BYOLConfig(MethodConfig):
    proj_hidden_dim: int = dim(4096)
    proj_dim: int = dim(256)
    pred_hidden_dim: int = dim(4096)
    momentum_base: float = checked(0.996, ge=0, le=1)  # τ at the start; cosine to momentum_final
    momentum_final: float = checked(1.0, ge=0, le=1)
    bn_in_heads: bool = True  # false: no BatchNorm in projector and predictor (the collapse experiment)
    # > 0: NN-BYOL's nearest-neighbour swap of the targets, with a support set of this many target projections
    nn_support_size: int = checked(0, ge=0, cap=QUEUE_CAP, hint="0: off (BYOL)")


@dataclass
class NNBYOLConfig(BYOLConfig):
    nn_support_size: int = checked(16384, ge=1, cap=QUEUE_CAP)  # 65,536 in solo-learn; see docs/distillation.md


@register_method("byol", help="BYOL: predict an EMA target's projection, no negatives (Grill et al. 2020)")
class BYOL(Method):
    """The online backbone is evaluated (the target is nearly the same; the paper evaluates the online one)."""

    Config = BYOLConfig
    cfg: BYOLConfig
    default_augment = "byol"
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    default_optimizer = "lars"
    base_lr = 1.0
    default_weight_decay = 1e-5
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64}

    def __init__(self, backbone, cfg: BYOLConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        norm = "bn" if c.bn_in_heads else None
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, 2, norm=norm)
        self.predictor = projection_head(c.proj_dim, c.pred_hidden_dim, c.proj_dim, 2, norm=norm)
        # the target follows backbone + projector; the Sequential only groups them for the copy
        self.target = EMATeacher(nn.Sequential(self.backbone, self.projector),
                                 Cosine(c.momentum_base, c.momentum_final))
        self.support = NearestNeighbourSupport(c.nn_support_size, c.proj_dim, option="method.nn_support_size") \
            if c.nn_support_size else None

    def check_batch(self, batch: ViewBatch) -> None:
        super().check_batch(batch)
        if self.support is not None:
            self.support.check_batch_size(batch.views[0].shape[0])

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = torch.cat(batch.views)
        h = self.backbone(x)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        z1, z2 = self.target(x).chunk(2)  # no_grad inside the teacher
        logs = {"ema_momentum": self.target.last_momentum.detach().clone()}
        if self.support is not None:  # NN-BYOL: the targets' nearest neighbours in the support set
            (z1, z2), logs["nn_cos"] = self.support.swap((z1, z2), batch.index)  # z1 enters after the step
        loss = normalized_mse(p1, z2) + normalized_mse(p2, z1)
        return MethodOutput(loss=loss, logs=logs, embedding=h[: p1.shape[0]].detach())


@register_method("nnbyol", help="NN-BYOL: BYOL whose targets are their nearest neighbours in a support set "
                                "(solo-learn, after Dwibedi et al. 2021)")
class NNBYOL(BYOL):
    """BYOL with ``nn_support_size`` on by default (NNCLR's nearest-neighbour swap of the targets)."""

    Config = NNBYOLConfig
    cfg: NNBYOLConfig
    test_overrides = {**BYOL.test_overrides, "nn_support_size": 64}
