"""VICReg (Bardes et al. 2022, "VICReg: Variance-Invariance-Covariance Regularization").

backbone → 3-layer expander (2048-2048-2048 here; 8192 in the paper) on both views; loss
``25·invariance + 25·variance + 1·covariance`` (:mod:`selfsup.losses.redundancy`).
What prevents collapse: the variance hinge keeps every dimension's std above γ = 1 across the batch (explicitly
forbidding the constant solution); the covariance term decorrelates dimensions. No EMA, no predictor, no
batch-norm requirement.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..components.base import StepContext
from ..components.gather import gather_with_grad
from ..config_checks import checked, dim
from ..losses.redundancy import covariance_loss, invariance_loss, variance_loss
from .barlow_twins import ProjectedPairMethod
from .base import MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class VICRegConfig(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(2048)
    proj_layers: int = checked(3, ge=1, cap=16)
    sim_weight: float = checked(25.0, ge=0)  # λ, invariance
    var_weight: float = checked(25.0, ge=0)  # μ, variance
    cov_weight: float = checked(1.0, ge=0)  # ν, covariance
    gamma: float = checked(1.0, gt=0)  # target std of each dimension


@register_method("vicreg", help="VICReg: variance, invariance and covariance terms (Bardes et al. 2022)")
class VICReg(ProjectedPairMethod):
    Config = VICRegConfig
    cfg: VICRegConfig
    default_augment = "byol"
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    default_optimizer = "lars"
    base_lr = 0.3
    default_weight_decay = 1e-4
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 64}

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c = self.cfg
        h1, z1, z2 = self.project(batch)
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)  # variance/covariance over the global batch
        inv = invariance_loss(z1, z2)
        var = (variance_loss(z1, c.gamma) + variance_loss(z2, c.gamma)) / 2
        cov = covariance_loss(z1) + covariance_loss(z2)
        loss = c.sim_weight * inv + c.var_weight * var + c.cov_weight * cov
        logs = {"invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}
        return MethodOutput(loss=loss, logs=logs, embedding=h1.detach())
