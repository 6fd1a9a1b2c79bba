"""W-MSE (Ermolov et al. 2021, "Whitening for Self-Supervised Representation Learning").

backbone → projector (1024 hidden, BN, 64-d embedding for CIFAR as in the paper) on V ≥ 2 views; each view's
embeddings are whitened (Cholesky) inside random sub-batches of ``w_size`` images, ``w_iter`` times with fresh
sub-batches, and the MSE of the L2-normalised whitened views is averaged over every pair of views
(:func:`~selfsup.losses.statistical.wmse_loss`).
What prevents collapse: whitened embeddings have identity covariance within every sub-batch, so they cannot
shrink to a point or a low-dimensional subspace; the MSE then only has to make the views agree.

The sub-batches are drawn over the global batch from the global torch RNG (identical on every rank, as the engine
keeps it), and every rank computes the loss on the gathered embeddings: 2 processes give the 1-process update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..components.base import StepContext
from ..components.gather import global_rows
from ..config_checks import checked, dim
from ..errors import ConfigError
from ..heads.mlp import projection_head
from ..losses.statistical import wmse_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .mmcr import gather_views, stack_views


@dataclass
class WMSEConfig(MethodConfig):
    proj_hidden_dim: int = dim(1024)
    proj_dim: int = dim(64)  # the embedding that is whitened (64 for CIFAR in the paper, 128 for larger data)
    # images per whitening sub-batch (the paper's CIFAR value: 128 with batch 256); must exceed proj_dim
    w_size: int = checked(128, ge=2, cap=2 ** 20)
    w_iter: int = checked(1, ge=1, cap=64)  # whitening iterations with fresh sub-batches per step
    w_eps: float = checked(0.0, ge=0, lt=1)  # shrinkage of the covariance to the identity before Cholesky

    def validate(self) -> None:
        if self.w_eps == 0 and self.w_size <= self.proj_dim:
            raise ConfigError(f"method.w_size ({self.w_size}) must exceed method.proj_dim ({self.proj_dim}): "
                              "a sub-batch of fewer rows than dimensions cannot be whitened (or set method.w_eps > 0)")


@register_method("wmse", help="W-MSE: MSE of views whitened in sub-batches (Ermolov et al. 2021)")
class WMSE(Method):
    Config = WMSEConfig
    cfg: WMSEConfig
    default_augment = "moco-v2"  # the paper's CIFAR views: crop 0.2-1, flip, jitter 0.4/0.1 p 0.8, grayscale
    min_views = 2
    needs_sync_bn = True
    default_optimizer = "adamw"
    base_lr = 3e-3  # the paper's CIFAR setting: Adam, lr 3e-3, weight decay 1e-6, batch 256
    default_weight_decay = 1e-6
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 4, "w_size": 8}

    def __init__(self, backbone, cfg: WMSEConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, 2)

    def check_batch(self, batch: ViewBatch) -> None:
        super().check_batch(batch)
        rows = global_rows(batch.views[0].shape[0])
        if rows < self.cfg.w_size:
            raise ValueError(f"wmse: the global batch ({rows}) must hold at least method.w_size ({self.cfg.w_size}) "
                             "images (lower method.w_size or raise train.batch_size)")

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        c, v = self.cfg, len(batch.views)
        h = self.backbone(torch.cat(batch.views))
        z = gather_views(stack_views(self.projector(h), v))
        # sub-batches from the global RNG, the same on every rank (components/gather.py: splittable randomness)
        perms = torch.stack([torch.randperm(z.shape[1]) for _ in range(c.w_iter)]).to(z.device)
        loss = wmse_loss(z, perms, c.w_size, c.w_eps)
        return MethodOutput(loss=loss, embedding=h[: batch.views[0].shape[0]].detach())
