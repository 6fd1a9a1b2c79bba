"""TiCo (Zhu et al. 2022, "TiCo: Transformation Invariance and Covariance Contrast"): agreement of an online
embedding with the other view's momentum-encoder embedding, plus ρ·zᵀC z against a running covariance C.

online: backbone → projector (z); target: EMA copy of backbone → projector (t, stop-gradient), momentum 0.99 →
1 (cosine), as in the momentum-encoder setup of the paper's BYOL-style implementation. The covariance matrix C
is a :class:`~selfsup.components.covariance.MomentumCovariance`: the loss uses ``C_t = β·C_{t−1} + (1 − β)·B``
with the batch's ``B = zᵀz/N`` (losses/covariance_contrast.py), and the engine folds B into C after the step.

Symmetric: both views go through both encoders and the 2N online rows [z1; z2] are paired with [t2; t1] in one
call, so B (and C) is the second moment of the online embeddings of both views (lightly's example and the
community implementation contrast one direction, view 1 online and view 2 target). Under torchrun z is gathered
with its gradient and t without, so B is the global batch's on every rank and C stays identical across ranks.

Defaults: β 0.9 and ρ 8 (the paper's recommended values; lightly's ``TiCoLoss`` defaults to ρ 20), projector
4096 → 256 (the paper's, also BYOL's here), BYOL's views and LARS settings. The momentum starts at 0.99 rather
than BYOL's 0.996: a short budget is a few thousand steps, and 0.99 lets the target follow within ~100 steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..components.base import StepContext
from ..components.covariance import MomentumCovariance
from ..components.ema import EMATeacher
from ..components.gather import gather_no_grad, gather_with_grad
from ..components.schedules import Cosine
from ..config_checks import checked, dim
from ..heads.mlp import projection_head
from ..losses.covariance_contrast import tico_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class TiCoConfig(MethodConfig):
    beta: float = checked(0.9, ge=0, le=1)  # momentum of the covariance matrix C
    rho: float = checked(8.0, ge=0)  # weight of the covariance contrast term
    proj_hidden_dim: int = dim(4096)
    proj_dim: int = dim(256)
    momentum_base: float = checked(0.99, ge=0, le=1)  # the target encoder's momentum; cosine to momentum_final
    momentum_final: float = checked(1.0, ge=0, le=1)


@register_method("tico", help="TiCo: invariance + covariance contrast against a momentum covariance matrix "
                              "(Zhu et al. 2022)")
class TiCo(Method):
    """The online backbone is evaluated; the projector, the target encoder and C are training-only."""

    Config = TiCoConfig
    cfg: TiCoConfig
    default_augment = "byol"
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch (the projector's BN), as BYOL's
    default_optimizer = "lars"
    base_lr = 1.0
    default_weight_decay = 1e-5
    # β 0.5: C reaches its running level within the contract test's 15 steps (from zeros, as in the paper, the
    # loss first rises while C fills, whatever is learnt), as MoCo's test queue is shrunk
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 32, "beta": 0.5}

    def __init__(self, backbone, cfg: TiCoConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, 2)
        self.target = EMATeacher(nn.Sequential(self.backbone, self.projector),
                                 Cosine(c.momentum_base, c.momentum_final))
        self.covariance = MomentumCovariance(c.proj_dim, c.beta)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = torch.cat(batch.views)
        h = self.backbone(x)
        z1, z2 = self.projector(h).chunk(2)
        t1, t2 = self.target(x).chunk(2)  # no_grad inside the teacher
        z = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])
        t = torch.cat([gather_no_grad(t2), gather_no_grad(t1)])
        loss, b = tico_loss(z, t, self.covariance.cov, self.cfg.beta, self.cfg.rho)
        self.covariance.stage(b, step=ctx.step if ctx is not None else None)
        logs = {"ema_momentum": self.target.last_momentum.detach().clone()}
        return MethodOutput(loss=loss, logs=logs, embedding=h[: z1.shape[0]].detach())
