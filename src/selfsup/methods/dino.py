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
from ..errors import ConfigError
from ..heads.dino import DINOHead
from ..losses.distillation import dino_loss
from .base import Method, MethodOutput, ViewBatch, register_method
from .byol import check_momentum


@dataclass
class DINOConfig:
    out_dim: int = 4096  # K, the number of soft classes (65536 in the paper, for ImageNet)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    head_bn: bool = False  # BatchNorm in the head's MLP (the paper: off for ViT, optional for ResNet)
    norm_last_layer: bool = True  # fix the last layer's weight-norm gain to 1
    freeze_last_layer_epochs: int = 1  # no gradient into the last layer during the first epoch(s)
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04  # linear warm-up to teacher_temp over teacher_temp_warmup of training
    teacher_temp: float = 0.07
    teacher_temp_warmup: float = 0.1  # fraction of training
    center_momentum: float = 0.9
    momentum_base: float = 0.996  # teacher EMA: cosine from momentum_base to momentum_final
    momentum_final: float = 1.0

    def validate(self) -> None:
        if self.out_dim < 2:
            raise ConfigError(f"method.out_dim must be >= 2, got {self.out_dim}")
        for k in ("student_temp", "teacher_temp_start", "teacher_temp"):
            if not getattr(self, k) > 0:
                raise ConfigError(f"method.{k} must be > 0, got {getattr(self, k)}")
        if not 0.0 <= self.teacher_temp_warmup <= 1.0:
            raise ConfigError(f"method.teacher_temp_warmup must be a fraction in [0, 1], got {self.teacher_temp_warmup}")
        if self.freeze_last_layer_epochs < 0:
            raise ConfigError(f"method.freeze_last_layer_epochs must be >= 0, got {self.freeze_last_layer_epochs}")
        check_momentum(self.center_momentum, "method.center_momentum")
        check_momentum(self.momentum_base, "method.momentum_base")
        check_momentum(self.momentum_final, "method.momentum_final")


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
    default_augment = "multicrop"
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
        if len(views) < 2:
            raise ValueError(f"dino expects at least 2 views (global crops first), got {len(views)}")
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
        return MethodOutput(loss=loss, logs=logs, embedding=first_h.detach(), probs=probs)
