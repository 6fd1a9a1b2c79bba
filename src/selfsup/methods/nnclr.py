"""NNCLR (Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning of Visual
Representations").

backbone → projector (z) → predictor (p) on both views. The positive of view 1 is not view 2 but the nearest
neighbour ``NN(z1, Q)`` of its projection in a support set Q of earlier projections (cosine similarity): other
images of (presumably) the same kind, more semantic variation than any augmentation. Loss (Algorithm 1):
``L(NN(z1), p2)/2 + L(NN(z2), p1)/2``, L the InfoNCE of each neighbour over the other view's predictions of the
batch (``losses.contrastive.nnclr_loss``); the support set receives the batch's view-1 projections after the step.

Under torchrun the predictions are gathered with gradients and the neighbours without (they are constants), so
every rank computes the loss of the global batch, as SimCLR does; the support set (a
:class:`~selfsup.components.nn_support.NearestNeighbourSupport`) receives every rank's projections.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..components.base import StepContext
from ..components.gather import gather_no_grad, gather_with_grad
from ..components.nn_support import NearestNeighbourSupport
from ..config_checks import QUEUE_CAP, checked, dim
from ..heads.mlp import mlp
from ..losses.contrastive import nnclr_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class NNCLRConfig(MethodConfig):
    temperature: float = checked(0.1, gt=0)
    # the support set; 98,304 in the paper (ImageNet, batch 4,096): see docs/contrastive.md for 16,384
    queue_size: int = checked(16384, ge=1, cap=QUEUE_CAP)
    proj_hidden_dim: int = dim(2048)
    proj_dim: int = dim(256)
    proj_layers: int = checked(3, ge=1, cap=16)
    pred_hidden_dim: int = dim(4096)


@register_method("nnclr", help="NNCLR: the nearest neighbour in a support set of projections as the positive "
                               "(Dwibedi et al. 2021)")
class NNCLR(Method):
    """The backbone is evaluated; projector, predictor and support set are training-only."""

    Config = NNCLRConfig
    cfg: NNCLRConfig
    default_augment = "byol"  # the paper uses BYOL's augmentations
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    default_optimizer = "lars"
    base_lr = 0.4  # solo-learn's CIFAR setting at batch 256
    default_weight_decay = 1e-5
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 32, "pred_hidden_dim": 64, "queue_size": 64}

    def __init__(self, backbone, cfg: NNCLRConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        # BN on every projector layer, the output's included (non-affine), as SimSiam's; predictor 2 layers
        dims = [backbone.num_features] + [c.proj_hidden_dim] * (c.proj_layers - 1) + [c.proj_dim]
        self.projector = mlp(dims, norm="bn", last_norm="bn")
        self.predictor = mlp([c.proj_dim, c.pred_hidden_dim, c.proj_dim], norm="bn")
        self.support = NearestNeighbourSupport(c.queue_size, c.proj_dim)

    def check_batch(self, batch: ViewBatch) -> None:
        super().check_batch(batch)
        self.support.check_batch_size(batch.views[0].shape[0])

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        h = self.backbone(torch.cat(batch.views))
        z = self.projector(h)
        p = self.predictor(z)
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        (nn1, nn2), nn_cos = self.support.swap((z1, z2), batch.index)  # z1 enters after the step
        loss = nnclr_loss(gather_no_grad(nn1), gather_no_grad(nn2), gather_with_grad(p1), gather_with_grad(p2),
                          self.cfg.temperature)
        return MethodOutput(loss=loss, logs={"nn_cos": nn_cos}, embedding=h[: z1.shape[0]].detach())
