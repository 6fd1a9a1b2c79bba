"""ReSSL (Zheng et al. 2021, "ReSSL: Relational Self-Supervised Learning with Weak Augmentation").

student: backbone → projector → L2-normalise, on a strongly augmented view; teacher: an EMA copy of both, on a
*weakly* augmented view of the same image (crop and flip only: the ``ressl`` preset's view 2). Neither embedding
is compared with the other directly: each is compared with a queue of earlier teacher embeddings, and the
student's relation ``softmax(s·Qᵀ/τ_s)`` (τ_s 0.1) is trained to match the teacher's sharpened relation
``softmax(t·Qᵀ/τ_t)`` (τ_t 0.04) by cross-entropy (``losses.distillation.relational_loss``). The queue (a
:class:`~selfsup.components.queue.FeatureQueue`) receives the batch's teacher embeddings after the step.

What prevents collapse: the sharpened teacher relation (a collapsed student has a uniform relation, far from the
peaked target), the EMA teacher and the stop-gradient. The loss is one-directional, as in the authors' code
(student on the strong view, teacher on the weak view).

The authors' queue starts as random unit vectors, relations to which are noise until the queue has been
refilled; here the relations cover the written rows only, and at the very first step, when none is written, the
current batch's teacher embeddings (as MoCo's first step does in this project). Under
torchrun the teacher embeddings of every rank enter the queue (identical on every rank); the loss is a per-image
mean, so the engine's gradient average gives the global batch's. No BN shuffle: student and teacher never see the
same images in one BN batch as a positive pair (each is compared with the queue only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.gather import gather_no_grad, global_rows
from ..components.queue import FeatureQueue
from ..config_checks import QUEUE_CAP, checked, dim
from ..errors import ConfigError
from ..heads.mlp import projection_head
from ..losses.distillation import relational_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .moco import momentum_schedule


@dataclass
class ReSSLConfig(MethodConfig):
    temperature: float = checked(0.1, gt=0)  # τ_s, the student's
    teacher_temp: float = checked(0.04, gt=0)  # τ_t < τ_s: the sharpened teacher relation
    queue_size: int = checked(4096, ge=1, cap=QUEUE_CAP)  # 16 batches of 256; the authors' ImageNet code: 131,072
    momentum: float = checked(0.99, ge=0, le=1)  # teacher EMA (the authors' ImageNet code: 0.999)
    momentum_end: float | None = checked(None, ge=0, le=1)  # None: constant; else a cosine to this (solo-learn: 1)
    proj_hidden_dim: int = dim(512)
    proj_dim: int = dim(128)


@register_method("ressl", help="ReSSL: student relation to a queue matches the EMA teacher's sharpened relation "
                               "on a weak view (Zheng et al. 2021)")
class ReSSL(Method):
    """The student backbone is evaluated; the teacher, projector and queue are training-only."""

    Config = ReSSLConfig
    cfg: ReSSLConfig
    default_augment = "ressl"  # view 1 strong (student), view 2 weak (teacher)
    n_views = 2
    needs_sync_bn = True  # BN statistics over the global batch, as in one process
    default_optimizer = "sgd"
    base_lr = 0.05  # the authors' code at batch 256 (solo-learn's CIFAR setting too)
    default_weight_decay = 1e-4
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 32, "queue_size": 64}

    def __init__(self, backbone, cfg: ReSSLConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        # the authors' head: Linear → ReLU → Linear, no BN
        self.projector = projection_head(backbone.num_features, c.proj_hidden_dim, c.proj_dim, 2, norm=None)
        self.teacher = EMATeacher(nn.Sequential(self.backbone, self.projector),
                                  momentum_schedule(c.momentum, c.momentum_end))
        self.queue = FeatureQueue(c.queue_size, c.proj_dim)

    def check_batch(self, batch: ViewBatch) -> None:
        super().check_batch(batch)
        rows = global_rows(batch.views[0].shape[0])
        if rows > self.cfg.queue_size:
            raise ConfigError(f"method.queue_size ({self.cfg.queue_size}) must be at least the global batch size "
                              f"({rows}): every step adds the batch's teacher embeddings to the queue")

    def _keys(self, batch_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys [queue rows | the batch's teacher embeddings] and the (K + N,) mask of those left out: the rows
        not yet written, and the batch's own embeddings unless the queue is still empty (the first step)."""
        queue = self.queue
        empty = queue.filled == 0
        unwritten = torch.arange(queue.size, device=batch_keys.device) >= queue.filled
        batch = ~empty.expand(batch_keys.shape[0])
        return torch.cat([queue.rows, batch_keys.to(queue.rows.dtype)]), torch.cat([unwritten, batch])

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        strong, weak = batch.views
        h = self.backbone(strong)
        s = F.normalize(self.projector(h), dim=1)
        t = F.normalize(self.teacher(weak), dim=1)  # no_grad inside the teacher
        every = gather_no_grad(t)  # (N, D): the teacher embeddings of every rank
        keys, mask = self._keys(every)
        loss = relational_loss(s, t, keys, self.cfg.temperature, self.cfg.teacher_temp, mask=mask)
        self.queue.stage(every)  # enqueued after the step
        logs = {"ema_momentum": self.teacher.last_momentum.detach().clone(),
                "pos_cos": (s.detach().float() * t.float()).sum(dim=1).mean()}
        return MethodOutput(loss=loss, logs=logs, embedding=h.detach())
