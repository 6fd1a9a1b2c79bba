"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"): self-distillation
with no labels.

student: backbone → DINO head on every crop; teacher: EMA copy of both, on the global crops only. Loss: the
cross-entropy between the teacher's centred, sharpened softmax and the student's softmax, over all pairs of a
teacher (global) view and a different student view (Eq. 3). Multi-crop: 2 global + N local crops.

What prevents collapse: centering (subtract an EMA of the teacher's batch mean, :class:`Center`) balanced by
sharpening (teacher temperature 0.04 → 0.07 warm-up, below the student's 0.1), plus the EMA teacher.
Only the :class:`~selfsup.backbones.base.Backbone` protocol is used (``backbone(x) → (B, D)``), so ResNets,
ConvNets and ViTs all work; crops of each size go through the backbone in one batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..augment.multicrop import count_global_views, group_by_size
from ..components.base import StepContext
from ..components.center import Center
from ..components.ema import EMATeacher
from ..components.schedules import Cosine, LinearWarmup
from ..config_checks import COUNT_CAP, checked, dim
from ..heads.dino import DINOHead
from ..losses.distillation import dino_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


@dataclass
class DINOConfig(MethodConfig):
    out_dim: int = dim(4096, ge=2)  # K, the number of soft classes (65536 in the paper, for ImageNet)
    hidden_dim: int = dim(2048)
    bottleneck_dim: int = dim(256)
    head_layers: int = checked(3, ge=1, cap=16)
    head_bn: bool = False  # BatchNorm in the head's MLP (the paper: off for ViT, optional for ResNet)
    norm_last_layer: bool = True  # fix the last layer's weight-norm gain to 1
    # no gradient into the last layer during the first epoch(s)
    freeze_last_layer_epochs: int = checked(1, ge=0, cap=COUNT_CAP)
    student_temp: float = checked(0.1, gt=0)
    # linear warm-up to teacher_temp over teacher_temp_warmup of training
    teacher_temp_start: float = checked(0.04, gt=0)
    teacher_temp: float = checked(0.07, gt=0)
    teacher_temp_warmup: float = checked(0.1, ge=0, le=1)  # fraction of training
    center_momentum: float = checked(0.9, ge=0, le=1)
    momentum_base: float = checked(0.996, ge=0, le=1)  # teacher EMA: cosine from momentum_base to momentum_final
    momentum_final: float = checked(1.0, ge=0, le=1)


class _Student(nn.Module):
    """backbone → head, the pair the EMA teacher copies (not registered in the method: it holds the same parts)."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@register_method("dino", help="DINO: self-distillation with centering and sharpening, multi-crop (Caron et al. 2021)")
class DINO(Method):
    """The student backbone is evaluated (``eval_backbone``); the paper reports the teacher, which is close."""

    Config = DINOConfig
    cfg: DINOConfig
    default_augment = "multicrop"
    min_views = 2  # global crops first, then local crops
    needs_sync_bn = True  # BN statistics over the global batch, as in the paper's multi-GPU runs
    default_optimizer = "lars"
    base_lr = 0.3
    default_weight_decay = 1e-6
    supports_multicrop = True
    # center held (momentum 1) and a constant teacher temperature: the loss is then a fixed target to fit
    test_overrides = {"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32, "center_momentum": 1.0,
                      "teacher_temp_warmup": 0.0}

    def __init__(self, backbone, cfg: DINOConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        c = self.cfg
        self.head = DINOHead(backbone.num_features, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers,
                             use_bn=c.head_bn, norm_last_layer=c.norm_last_layer)
        self.teacher = EMATeacher(_Student(self.backbone, self.head), Cosine(c.momentum_base, c.momentum_final))
        self.center = Center(c.out_dim, c.center_momentum)
        self.teacher_temp = LinearWarmup(c.teacher_temp_start, c.teacher_temp, c.teacher_temp_warmup)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        ctx = ctx or StepContext()
        views = batch.views
        n_global = count_global_views(views)
        freeze = ctx.epoch < self.cfg.freeze_last_layer_epochs
        student, first_h = [], None
        for start, end in group_by_size(views):  # one backbone pass per crop size
            h = self.backbone(torch.cat(views[start:end]))
            if first_h is None:
                first_h = h[: views[0].shape[0]]
            student.append(self.head(h, freeze_last_layer=freeze).chunk(end - start))
        s = torch.stack([t for group in student for t in group])  # (V, B, K)
        t = torch.stack(self.teacher(torch.cat(views[:n_global])).chunk(n_global))  # (V_g, B, K), no grad
        tt = self.teacher_temp(ctx.progress)
        loss = dino_loss(s, t, self.center.center, self.cfg.student_temp, tt)
        self.center.observe(t.flatten(0, 1), ctx)
        logs = {"teacher_temp": torch.tensor(tt), "ema_momentum": self.teacher.last_momentum.detach().clone()}
        # teacher output distribution of the first global crop, for the entropy collapse monitors
        probs = torch.softmax((t[0] - self.center.center) / tt, dim=-1).detach()
        assert first_h is not None  # views is non-empty
        return MethodOutput(loss=loss, logs=logs, embedding=first_h.detach(), probs=probs)
