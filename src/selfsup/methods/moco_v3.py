"""MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers").

No queue: each view's query (backbone → 3-layer projector → 2-layer predictor) is contrasted with the momentum
encoder's keys of the other view for the whole batch (the other images' keys are the negatives), and the two
directions are summed: ``L = ctr(q1, k2) + ctr(q2, k1)``, ``ctr = 2τ · InfoNCE``. The momentum follows a cosine
from 0.99 to 1. Keys and queries come from separate encoders and the loss has in-batch negatives only, so there
is no BN leakage to hide: both views run through full-batch BN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.gather import gather_no_grad, rank
from ..config_checks import checked, dim
from ..heads.mlp import mlp
from ..losses.contrastive import info_nce
from ..losses.precision import fp32_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .moco import momentum_schedule


@dataclass
class MoCoV3Config(MethodConfig):
    temperature: float = checked(0.2, gt=0)
    momentum: float = checked(0.99, ge=0, le=1)
    momentum_end: float | None = checked(1.0, ge=0, le=1)  # cosine from `momentum` to this; None: constant
    proj_hidden_dim: int = dim(1024)  # paper: 4096 for ResNet-50's 2048 features
    proj_dim: int = dim(256)
    proj_layers: int = checked(3, ge=1, cap=16)
    pred_hidden_dim: int = dim(1024)


@fp32_loss
def ctr_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's ``ctr(q, k)``: InfoNCE of q (B, D) against the keys k (B, D) of the batch, scaled by 2τ.

    Under torchrun the keys (no gradient: they come from the momentum encoder) of every rank are the negatives,
    q's positives sitting at rows ``rank·B + i``; the mean over this rank's queries, averaged by the engine over
    the ranks, is the one-process loss over the global batch.
    """
    q, k = F.normalize(q.float(), dim=1), F.normalize(gather_no_grad(k.float()), dim=1)
    target = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
    return 2 * temperature * info_nce(q, k, target, temperature)


@register_method("moco-v3", help="MoCo v3: momentum encoder, predictor, symmetric in-batch InfoNCE (Chen et al. 2021)")
class MoCoV3(Method):
    """The online backbone is evaluated; projector, predictor and momentum encoder are training-only."""

    Config = MoCoV3Config
    cfg: MoCoV3Config
    default_augment = "moco-v3"
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper (SyncBN)
    default_optimizer = "sgd"  # the paper uses LARS at batch 4096; SGD suits batch 256 (see docs/contrastive.md)
    base_lr = 0.3
    default_weight_decay = 1e-4

    def __init__(self, backbone, cfg: MoCoV3Config | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        dims = [backbone.num_features] + [c.proj_hidden_dim] * (c.proj_layers - 1) + [c.proj_dim]
        self.projector = mlp(dims, norm="bn", last_norm="bn")  # last BN without affine, as in the paper
        self.predictor = mlp([c.proj_dim, c.pred_hidden_dim, c.proj_dim], norm="bn")
        self.key_encoder = EMATeacher(nn.Sequential(backbone, self.projector),
                                      momentum_schedule(c.momentum, c.momentum_end))

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x1, x2 = batch.views
        h1, h2 = self.backbone(x1), self.backbone(x2)
        q1, q2 = self.predictor(self.projector(h1)), self.predictor(self.projector(h2))
        k1, k2 = self.key_encoder(x1), self.key_encoder(x2)
        t = self.cfg.temperature
        loss = ctr_loss(q1, k2, t) + ctr_loss(q2, k1, t)
        return MethodOutput(loss=loss, embedding=h1.detach())
