"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"): an online network predicts an EMA target's projection.

online: backbone → projector → predictor (p);  target: EMA copy of backbone → projector (z, stop-gradient).
Loss: ``normalized_mse(p1, z2) + normalized_mse(p2, z1)`` (symmetric, Eq. 2). The target's momentum τ follows
a cosine schedule from ``momentum_base`` (0.996) to ``momentum_final`` (1), applied by the engine after each step.

What prevents collapse: the predictor, the stop-gradient and the slowly moving target — and, in practice, batch
norm in the heads (Fetterman & Albrecht 2020; the seeds' experiment). ``bn_in_heads=false`` removes it to show
the collapse (``benchmarks/byol_collapse.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.schedules import Cosine
from ..config_checks import checked, dim
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

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = torch.cat(batch.views)
        h = self.backbone(x)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        z1, z2 = self.target(x).chunk(2)  # no_grad inside the teacher
        loss = normalized_mse(p1, z2) + normalized_mse(p2, z1)
        return MethodOutput(loss=loss, logs={"ema_momentum": self.target.last_momentum.detach().clone()},
                            embedding=h[: p1.shape[0]].detach())
