"""MMCR (Yerxa et al. 2023, "Learning efficient coding of natural images with maximum manifold capacity
representations").

backbone → projector (2-layer, 512 → 128, no biases, as in the authors' CIFAR code) on k views of every image;
the loss (:func:`~selfsup.losses.statistical.mmcr_loss`) maximises the nuclear norm of the (B, D) matrix of the
per-image centroids of the L2-normalised views, optionally plus λ·(mean per-image nuclear norm).
What prevents collapse: the nuclear norm of the centroid matrix is largest when the centroids are long (the
views of an image agree, so their mean stays near the sphere) and spread over many orthogonal directions (the
images differ): invariance and spread come from the one term.

``momentum_encoder=true`` is the authors' momentum variant: an EMA copy of backbone + projector embeds the same
views, and the centroids average the online and momentum centroids (stop-gradient on the momentum branch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.gather import gather_with_grad
from ..components.schedules import Cosine
from ..config_checks import checked, dim
from ..heads.mlp import mlp
from ..losses.statistical import mmcr_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class MMCRConfig(MethodConfig):
    proj_hidden_dim: int = dim(512)
    proj_dim: int = dim(128)
    lambd: float = checked(0.0, ge=0)  # weight of the per-image nuclear norm (0 in the paper's CIFAR runs)
    momentum_encoder: bool = False  # the authors' momentum variant
    momentum_base: float = checked(0.99, ge=0, le=1)  # EMA momentum: cosine from momentum_base to momentum_final
    momentum_final: float = checked(1.0, ge=0, le=1)


def stack_views(z: torch.Tensor, n_views: int) -> torch.Tensor:
    """(V·B, D) embeddings of ``torch.cat(views)`` → (V, B, D)."""
    return z.view(n_views, -1, z.shape[-1])


def gather_views(z: torch.Tensor) -> torch.Tensor:
    """(V, B, D) per rank → (V, W·B, D), images in global-batch order, differentiable."""
    return gather_with_grad(z.transpose(0, 1).contiguous()).transpose(0, 1)


@register_method("mmcr", help="MMCR: maximise the nuclear norm of the view centroids (Yerxa et al. 2023)")
class MMCR(Method):
    """The online backbone is evaluated."""

    Config = MMCRConfig
    cfg: MMCRConfig
    default_augment = "mmcr"
    min_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as for the other projector methods
    default_optimizer = "adamw"
    # the authors' CIFAR setting (Adam, lr 1e-3, weight decay 1e-6 at batch 32): Adam's step does not grow with
    # the batch, so the same lr is taken at 256 (linear scaling from 32 would give 8e-3)
    base_lr = 1e-3
    default_weight_decay = 1e-6
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 32}

    def __init__(self, backbone, cfg: MMCRConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.projector = mlp([backbone.num_features, c.proj_hidden_dim, c.proj_dim], bias=False)
        self.target = (EMATeacher(nn.Sequential(self.backbone, self.projector),
                                  Cosine(c.momentum_base, c.momentum_final)) if c.momentum_encoder else None)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        v = len(batch.views)
        x = torch.cat(batch.views)
        h = self.backbone(x)
        z = gather_views(stack_views(self.projector(h), v))  # the centroid matrix spans the global batch
        target = gather_views(stack_views(self.target(x), v)) if self.target is not None else None
        loss = mmcr_loss(z, self.cfg.lambd, target)
        logs = {"nuclear_norm": -loss.detach()} if not self.cfg.lambd else {}
        if self.target is not None:
            logs["ema_momentum"] = self.target.last_momentum.detach().clone()
        return MethodOutput(loss=loss, logs=logs, embedding=h[: batch.views[0].shape[0]].detach())
