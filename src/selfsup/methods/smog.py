"""SMoG (Pang et al. 2022, "Unsupervised Visual Representation Learning by Synchronous Momentum Grouping").

online: backbone → projector → predictor (p); target: EMA copy of backbone → projector (z, no gradient).
Each target feature is assigned to its nearest group (:class:`~selfsup.components.groups.MomentumGroups`); each
view's prediction must pick out, among all G groups, the group of the *other* view's target
(:func:`~selfsup.losses.clustering.group_contrastive_loss`, τ = 0.1), symmetrised:
``(ℓ(p1, a(z2)) + ℓ(p2, a(z1))) / 2``. After the step the groups move by momentum (β = 0.99) towards the
target features assigned to them, and every ``reset_interval`` steps they are re-clustered by k-means of a
memory of recent target features.

The contrastive unit is the group rather than the instance: the negatives are the other G − 1 groups, so no large
batch or queue of instances is needed. What prevents collapse: a prediction must be closer to its target's group
than to every other group, which needs the features spread over groups that stay apart; the k-means resets put
the groups back onto the modes of the recent features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.groups import MomentumGroups
from ..components.schedules import Cosine
from ..config_checks import COUNT_CAP, QUEUE_CAP, SEED_CAP, checked, dim
from ..errors import ConfigError
from ..heads.mlp import projection_head
from ..losses.clustering import group_contrastive_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class SMoGConfig(MethodConfig):
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(128)
    pred_hidden_dim: int = dim(2048)
    # the paper's 3000 groups are for ImageNet; 300 (lightly's CIFAR-10 setting) keeps ~170 CIFAR images a group
    n_groups: int = dim(300, ge=2)
    temperature: float = checked(0.1, gt=0)
    group_momentum: float = checked(0.99, ge=0, lt=1)  # β of the group update
    reset_interval: int = checked(300, ge=1, cap=COUNT_CAP)  # steps between k-means resets (the paper's 300)
    memory_size: int = checked(32768, ge=1, cap=QUEUE_CAP)  # recent target features the resets cluster
    kmeans_iterations: int = checked(10, ge=1, cap=1000)
    kmeans_seed: int = checked(0, ge=0, cap=SEED_CAP)
    momentum_base: float = checked(0.99, ge=0, le=1)  # the target encoder's EMA, cosine to momentum_final
    momentum_final: float = checked(1.0, ge=0, le=1)

    def validate(self) -> None:
        if self.memory_size < self.n_groups:
            raise ConfigError(f"method.memory_size ({self.memory_size}) must be >= method.n_groups "
                              f"({self.n_groups}): the group resets cluster the memory into n_groups")


@register_method("smog", help="SMoG: group-level contrast with momentum-updated group features, periodic k-means "
                              "reset (Pang et al. 2022)")
class SMoG(Method):
    Config = SMoGConfig
    cfg: SMoGConfig
    default_augment = "byol"
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    default_optimizer = "lars"
    base_lr = 0.3
    default_weight_decay = 1e-5
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64, "n_groups": 4,
                      "memory_size": 16, "reset_interval": 2}

    def __init__(self, backbone, cfg: SMoGConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, 2)
        self.predictor = projection_head(c.proj_dim, c.pred_hidden_dim, c.proj_dim, 2)
        self.target = EMATeacher(nn.Sequential(self.backbone, self.projector),
                                 Cosine(c.momentum_base, c.momentum_final))
        self.groups = MomentumGroups(c.n_groups, c.proj_dim, c.group_momentum, c.reset_interval, c.memory_size,
                                     c.kmeans_iterations, c.kmeans_seed)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = torch.cat(batch.views)
        h = self.backbone(x)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        z = self.target(x)  # no_grad inside the teacher
        a1, a2 = self.groups.assign(z).chunk(2)
        g, tau = self.groups.features, self.cfg.temperature
        loss = (group_contrastive_loss(p1, g, a2, tau) + group_contrastive_loss(p2, g, a1, tau)) / 2
        self.groups.stage(*z.chunk(2), ctx=ctx)
        return MethodOutput(loss=loss, logs={"ema_momentum": self.target.last_momentum.detach().clone()},
                            embedding=h[: p1.shape[0]].detach())
