"""iBOT (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer"): DINO on the [CLS] token plus
masked-patch self-distillation.

Student: the ViT on every crop; its global crops are block-masked (a learned mask token replaces the masked patch
embeddings) on a fraction of the images (``mask_probability``, 0.5 in the paper), each masked image with a ratio
drawn from ``[mask_ratio_min, mask_ratio_max]`` ((0.1, 0.5)), block sizes scaled to the grid
(``augment/masking.py``). Teacher: the EMA copy of backbone and heads on the *unmasked* global crops.

- [CLS] loss: DINO's (``losses/distillation.dino_loss``): every (teacher global view, other student view) pair,
  local crops included, against the teacher's centred, sharpened [CLS] distribution.
- patch loss (``losses/distill_vit.ibot_patch_loss``): at each masked position of student view v, the student's
  patch distribution against the teacher's at the same position of view v; its own centre (an EMA of the
  teacher's mean patch output) and teacher temperature.
- ``loss = cls_weight · L_cls + patch_weight · L_patch`` (λ1 = λ2 = 1).

The heads (``heads/token_heads.py``): one head for [CLS] and patches by default (the paper); ``patch_head``
``last-layer`` (the authors' code without ``shared_head``) or ``separate``. Stochastic depth on the student
(``drop_path_rate``, 0.1 for ViT-S in the paper, linear over depth). The same implementation, with Sinkhorn-Knopp
centering, KoLeo and layer-wise lr decay switched on, is ``dinov2`` (``methods/dinov2.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..augment.masking import check_ratio_range, partial_block_masks
from ..augment.multicrop import count_global_views, group_by_size
from ..components.base import StepContext
from ..components.center import Center
from ..components.ema import EMATeacher
from ..components.gather import gather_with_grad
from ..components.schedules import Cosine, LinearWarmup
from ..components.sinkhorn_dist import distributed_sinkhorn
from ..config_checks import COUNT_CAP, DIM_CAP, checked, dim
from ..errors import ConfigError
from ..heads.token_heads import HEAD_MODES, TokenHeads
from ..losses.distill_vit import ibot_patch_loss, koleo_loss, masked_patch_distillation
from ..losses.distillation import cross_view_cross_entropy, dino_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .mae import require_vit
from .vit_student import (
    check_drop_path_backbone,
    drop_path_rates,
    encode,
    patch_tokens,
    per_view_rows,
    vit_lr_scales,
)

if TYPE_CHECKING:
    from ..backbones.vit import ViT

CENTERING = ("center", "sinkhorn")


@dataclass
class IBOTConfig(MethodConfig):
    out_dim: int = dim(4096, ge=2)  # K of the [CLS] head (8192 in iBOT for ImageNet)
    patch_out_dim: int | None = checked(None, ge=2, cap=DIM_CAP, hint="None: out_dim")  # K of the patch head
    patch_head: str = checked("shared", choices=HEAD_MODES)  # shared | last-layer | separate
    hidden_dim: int = dim(2048)
    bottleneck_dim: int = dim(256)
    head_layers: int = checked(3, ge=1, cap=16)
    norm_last_layer: bool = False  # iBOT's ViT-S/B runs learn the last layer's gain
    freeze_last_layer_epochs: int = checked(1, ge=0, cap=COUNT_CAP)
    student_temp: float = checked(0.1, gt=0)
    teacher_temp_start: float = checked(0.04, gt=0)  # [CLS]: linear warm-up to teacher_temp
    teacher_temp: float = checked(0.07, gt=0)
    teacher_patch_temp_start: float = checked(0.04, gt=0)  # patches: linear warm-up to teacher_patch_temp
    teacher_patch_temp: float = checked(0.07, gt=0)
    teacher_temp_warmup: float = checked(0.1, ge=0, le=1)  # fraction of training, both warm-ups
    centering: str = checked("center", choices=CENTERING)  # center (EMA of the teacher means) | sinkhorn
    sinkhorn_iterations: int = checked(3, ge=1, cap=1000)
    center_momentum: float = checked(0.9, ge=0, le=1)
    patch_center_momentum: float = checked(0.9, ge=0, le=1)
    momentum_base: float = checked(0.996, ge=0, le=1)  # teacher EMA: cosine from momentum_base to momentum_final
    momentum_final: float = checked(1.0, ge=0, le=1)
    mask_probability: float = checked(0.5, ge=0, le=1)  # fraction of the global crops that are masked
    mask_ratio_min: float = checked(0.1, gt=0, lt=1)  # a masked crop hides r ~ U(min, max) of its patches
    mask_ratio_max: float = checked(0.5, gt=0, lt=1)
    cls_weight: float = checked(1.0, ge=0)  # λ1
    patch_weight: float = checked(1.0, ge=0)  # λ2
    koleo_weight: float = checked(0.0, ge=0)  # DINOv2's KoLeo on the student's global [CLS] tokens; 0: off
    drop_path_rate: float = checked(0.1, ge=0, lt=1)  # stochastic depth of the student
    drop_path_uniform: bool = False  # every block at drop_path_rate (DINOv2), or linear from 0 over depth (iBOT)
    layer_decay: float = checked(1.0, gt=0, le=1)  # layer-wise lr decay during pretraining (DINOv2: 0.9); 1: off
    patch_embed_lr_mult: float = checked(1.0, gt=0, le=1)  # the patch embedding's extra lr factor (DINOv2: 0.2)

    def validate(self) -> None:
        check_ratio_range(self.mask_ratio_min, self.mask_ratio_max)
        if self.patch_head == "shared" and self.patch_out_dim not in (None, self.out_dim):
            raise ConfigError(f"method.patch_out_dim ({self.patch_out_dim}) must equal method.out_dim "
                              f"({self.out_dim}) with method.patch_head=shared (one head for both)")


class _TokenDistiller(nn.Module):
    """backbone → heads on [CLS] and patch tokens, unmasked: what the EMA teacher copies and runs."""

    def __init__(self, backbone: nn.Module, heads: TokenHeads) -> None:
        super().__init__()
        self.backbone, self.heads = backbone, heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, K) [CLS] logits and (R, N, K_patch) patch logits."""
        bb = cast("ViT", self.backbone)
        grid = bb.grid_for(x)
        n = grid[0] * grid[1]
        tokens = bb.forward_tokens(x)
        patches = self.heads.patch(patch_tokens(tokens, n).flatten(0, 1))
        return self.heads.cls(tokens[:, 0]), patches.view(x.shape[0], n, -1)


@register_method("ibot", help="iBOT: DINO on [CLS] plus masked-patch self-distillation from an EMA teacher, "
                              "multi-crop, ViT (Zhou et al. 2022)")
class IBOT(Method):
    """The student backbone is evaluated (``eval_backbone``), as for DINO."""

    Config = IBOTConfig
    cfg: IBOTConfig
    default_augment = "multicrop"
    min_views = 2  # global crops first, then local crops
    default_optimizer = "adamw"
    base_lr = 5e-4  # iBOT: 5e-4 at batch 256 (linear scaling), AdamW, weight decay 0.04 (→ 0.4 in the paper)
    default_weight_decay = 0.04
    supports_multicrop = True
    test_backbone = "vit-test"
    # centres held (momentum 1), constant temperatures and every crop masked: a fixed target for the learning test
    test_overrides = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "center_momentum": 1.0,
                      "patch_center_momentum": 1.0, "teacher_temp_warmup": 0.0, "mask_probability": 1.0}

    def __init__(self, backbone, cfg: IBOTConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        require_vit(backbone, self.method_name())
        c = self.cfg
        d = backbone.num_features
        self.patch_out_dim = c.patch_out_dim or c.out_dim
        self.heads = TokenHeads(d, c.out_dim, self.patch_out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers,
                                mode=c.patch_head, norm_last_layer=c.norm_last_layer)
        self.mask_token = nn.Parameter(torch.zeros(d))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.teacher = EMATeacher(_TokenDistiller(self.backbone, self.heads), Cosine(c.momentum_base, c.momentum_final))
        sinkhorn = c.centering == "sinkhorn"
        self.center = None if sinkhorn else Center(c.out_dim, c.center_momentum)
        self.patch_center = None if sinkhorn else Center(self.patch_out_dim, c.patch_center_momentum)
        self.teacher_temp = LinearWarmup(c.teacher_temp_start, c.teacher_temp, c.teacher_temp_warmup)
        self.teacher_patch_temp = LinearWarmup(c.teacher_patch_temp_start, c.teacher_patch_temp, c.teacher_temp_warmup)
        self.drop_rates = drop_path_rates(backbone.depth, c.drop_path_rate, c.drop_path_uniform)
        check_drop_path_backbone(backbone, self.drop_rates)

    def lr_scales(self) -> dict[str, float]:
        c = self.cfg
        return vit_lr_scales(self, cast("ViT", self.backbone).depth, c.layer_decay, c.patch_embed_lr_mult)

    def masks(self, x: torch.Tensor, views: int) -> torch.Tensor:
        """(views·B, N) bool masks of the global crops, drawn per view for the global batch (rank rows kept)."""
        c = self.cfg
        grid = cast("ViT", self.backbone).grid_for(x)
        return per_view_rows(lambda rows: partial_block_masks(rows, grid, (c.mask_ratio_min, c.mask_ratio_max),
                                                              c.mask_probability), views, x.shape[0]).to(x.device)

    def _student(self, views: list[torch.Tensor], n_global: int, masks: torch.Tensor, freeze: bool):
        """Student [CLS] logits (V, B, K), the masked positions' patch logits (M, K_patch) and the global crops'
        final-norm [CLS] tokens (V_g·B, D)."""
        bb = self.backbone
        b = views[0].shape[0]
        xg = torch.cat(views[:n_global])
        n = masks.shape[1]
        tokens = encode(bb, xg, views=n_global, drop_rates=self.drop_rates, mask=masks, mask_token=self.mask_token)
        cls_g = tokens[:, 0]
        student = list(self.heads.cls(cls_g, freeze_last_layer=freeze).chunk(n_global))
        patch_logits = self.heads.patch(patch_tokens(tokens, n)[masks], freeze_last_layer=freeze)
        for start, end in group_by_size(views[n_global:]):  # local crops: unmasked, one pass per size
            x = torch.cat(views[n_global + start: n_global + end])
            t = encode(bb, x, views=end - start, drop_rates=self.drop_rates)
            student += list(self.heads.cls(t[:, 0], freeze_last_layer=freeze).chunk(end - start))
        assert all(s.shape[0] == b for s in student)
        return torch.stack(student), patch_logits, cls_g

    def _losses(self, s: torch.Tensor, sp: torch.Tensor, t: torch.Tensor, tp: torch.Tensor, masks: torch.Tensor,
                ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[CLS] and patch losses; the teacher's [CLS] probabilities of the first global view (for the monitors).
        t: (V_g, B, K) teacher [CLS] logits; tp: (M, K_patch) its patch logits at the masked positions."""
        c = self.cfg
        tt, tpt = self.teacher_temp(ctx.progress), self.teacher_patch_temp(ctx.progress)
        if self.center is None or self.patch_center is None:  # DINOv2: Sinkhorn-Knopp codes as targets
            q = distributed_sinkhorn(t.flatten(0, 1), tt, c.sinkhorn_iterations).view_as(t)
            qp = distributed_sinkhorn(tp, tpt, c.sinkhorn_iterations)
            l_cls = cross_view_cross_entropy(s, q, c.student_temp)
            l_patch = masked_patch_distillation(sp, qp, masks, c.student_temp)
            return l_cls, l_patch, q[0]
        l_cls = dino_loss(s, t, self.center.center, c.student_temp, tt)
        l_patch = ibot_patch_loss(sp, tp, self.patch_center.center, masks, c.student_temp, tpt)
        return l_cls, l_patch, torch.softmax((t[0] - self.center.center) / tt, dim=-1)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        ctx = ctx or StepContext()
        c = self.cfg
        views = batch.views
        n_global = count_global_views(views)
        b = views[0].shape[0]
        masks = self.masks(views[0], n_global)
        freeze = ctx.epoch < c.freeze_last_layer_epochs
        s, sp, cls_g = self._student(views, n_global, masks, freeze)
        t_cls, t_patch = self.teacher(torch.cat(views[:n_global]))  # unmasked crops, no grad
        t = torch.stack(t_cls.chunk(n_global))  # (V_g, B, K)
        l_cls, l_patch, probs = self._losses(s, sp, t, t_patch[masks], masks, ctx)
        loss = c.cls_weight * l_cls + c.patch_weight * l_patch
        logs = {"cls_loss": l_cls.detach(), "patch_loss": l_patch.detach(),
                "mask_fraction": masks.float().mean().detach(),
                "ema_momentum": self.teacher.last_momentum.detach().clone()}
        if c.koleo_weight > 0:
            # the global batch's nearest neighbours (gathered with gradients), one term per global view, summed
            koleo = torch.stack([koleo_loss(gather_with_grad(v)) for v in cls_g.chunk(n_global)]).sum()
            loss = loss + c.koleo_weight * koleo
            logs["koleo"] = koleo.detach()
        if self.center is not None and self.patch_center is not None:
            self.center.observe(t_cls, ctx)
            self.patch_center.observe(t_patch.flatten(0, 1), ctx)
        return MethodOutput(loss=loss, logs=logs, embedding=cls_g[:b].detach(), probs=probs.detach())
