"""VIbCReg (Lee, Aune & Nakamura 2021, "VIbCReg: Variance-Invariance-better-Covariance Regularization").

VICReg with two changes: the expander ends in IterNorm (iterative group-wise whitening, Huang et al. 2019;
:mod:`selfsup.heads.iternorm`), and the covariance term becomes the feature-decorrelation term, the mean squared
off-diagonal correlation (:func:`~selfsup.losses.redundancy.decorrelation_loss`), weighted ν = 200 (λ = μ = 25
as VICReg). Whitening makes the decorrelation term start small and the variance hinge nearly satisfied, which
the paper reports speeds up convergence; the loss is :func:`~selfsup.losses.redundancy.vibcreg_loss` over the
global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..components.base import StepContext
from ..components.gather import gather_with_grad
from ..config_checks import checked
from ..errors import ConfigError
from ..heads.iternorm import IterNorm
from ..losses.redundancy import decorrelation_loss, invariance_loss, variance_loss
from .barlow_twins import ProjectedPairMethod
from .base import MethodOutput, ViewBatch, register_method
from .vicreg import VICRegConfig


@dataclass
class VIbCRegConfig(VICRegConfig):
    cov_weight: float = checked(200.0, ge=0)  # ν, feature decorrelation (the paper's value)
    iternorm_groups: int = checked(64, ge=1, cap=65536)  # the paper's 64 groups; must divide proj_dim
    iternorm_iterations: int = checked(5, ge=1, cap=100)  # Newton iterations T

    def validate(self) -> None:
        if self.proj_dim % self.iternorm_groups:
            raise ConfigError(f"method.iternorm_groups ({self.iternorm_groups}) must divide method.proj_dim "
                              f"({self.proj_dim})")


@register_method("vibcreg", help="VIbCReg: VICReg with an IterNorm-whitened projector and feature decorrelation "
                                 "(Lee et al. 2021)")
class VIbCReg(ProjectedPairMethod):
    Config = VIbCRegConfig
    cfg: VIbCRegConfig
    default_augment = "byol"
    needs_sync_bn = True  # BN statistics over the global batch (IterNorm's are global anyway)
    default_optimizer = "lars"
    base_lr = 0.3
    default_weight_decay = 1e-4
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 64, "iternorm_groups": 4}

    def __init__(self, backbone, cfg: VIbCRegConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        # the end of the projector: each view is whitened over its own (global) batch, as in the authors' code
        self.whiten = IterNorm(c.proj_dim, c.iternorm_groups, c.iternorm_iterations)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c = self.cfg
        h1, z1, z2 = self.project(batch)
        z1, z2 = self.whiten(z1), self.whiten(z2)
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)  # the loss over the global batch, as VICReg
        inv = invariance_loss(z1, z2)
        var = (variance_loss(z1, c.gamma) + variance_loss(z2, c.gamma)) / 2
        dec = decorrelation_loss(z1) + decorrelation_loss(z2)
        loss = c.sim_weight * inv + c.var_weight * var + c.cov_weight * dec
        logs = {"invariance": inv.detach(), "variance": var.detach(), "decorrelation": dec.detach()}
        return MethodOutput(loss=loss, logs=logs, embedding=h1.detach())
