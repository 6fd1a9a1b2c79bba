"""I-JEPA (Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding Predictive
Architecture").

One view per image. Multi-block masks (:func:`~selfsup.augment.masking.multiblock_masking`): 4 target blocks
(scale 0.15–0.2, aspect 0.75–1.5) and one context block (scale 0.85–1, square) with every target patch removed.
The context encoder (the ViT) sees only the context patches (``ViT.embed(keep=...)``); an EMA copy of it, the
target encoder, sees the whole image, and its final-norm patch tokens, layer-normed once more without affine
parameters, are the targets. A narrow predictor ViT (:class:`~selfsup.heads.predictor_vit.PredictorViT`) takes
the context tokens plus one positional query per target patch and predicts each target block's representations
(one predictor pass per block, as in the authors' code). Loss: smooth L1 (β = 1) in representation space, the
authors' code; ``loss=l2`` gives the paper's squared error. The target encoder's momentum rises linearly from
0.996 to 1 over training. No augmentation beyond crop and flip, no negatives, no pixel reconstruction.

Our ViT has a CLS token, I-JEPA's has none: the CLS token stays in the context encoder's sequence and is handed
to the predictor as a context token without a position, so the pooled CLS feature that evaluation reads is
trained too.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment.masking import MultiBlockMask, gather_tokens, multiblock_masking
from ..backbones.vit import ViT
from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.gather import global_rows, rank_rows
from ..components.schedules import LinearWarmup
from ..config_checks import DIM_CAP, checked, dim
from ..errors import ConfigError
from ..heads.predictor_vit import PredictorViT
from ..losses.predictive import JEPA_LOSSES, jepa_loss
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method


def require_builtin_vit(backbone, method: str) -> ViT:
    """Methods that need the built-in ViT's token options (``keep=``, ``attn_mask=``, registers)."""
    if not isinstance(backbone, ViT):
        raise ConfigError(f"method '{method}' needs the built-in ViT backbone (--backbone vit-tiny, vit-small or "
                          f"vit), got {type(backbone).__name__}")
    return backbone


@dataclass
class IJEPAConfig(MethodConfig):
    num_targets: int = checked(4, ge=1, cap=64)  # M target blocks per image
    target_scale: tuple[float, float] = checked((0.15, 0.2), gt=0, le=1)  # each block's share of the patches
    target_aspect: tuple[float, float] = checked((0.75, 1.5), gt=0, cap=16)  # height / width
    context_scale: tuple[float, float] = checked((0.85, 1.0), gt=0, le=1)  # before the targets are removed
    # a context position is taken when it keeps more than this many patches (the authors: 4; 10 at 224 px)
    min_keep: int = checked(4, ge=0, cap=DIM_CAP)
    pred_dim: int = dim(128, ge=4)  # I-JEPA: 384 for ViT-H; a narrow predictor suits ViT-Tiny on 32 px images
    pred_depth: int = checked(4, ge=1, cap=64)  # I-JEPA: 12 for ViT-H
    pred_heads: int = checked(4, ge=1, cap=DIM_CAP)
    loss: str = checked("smooth_l1", choices=JEPA_LOSSES)  # smooth_l1: the authors' code; l2: the paper
    momentum_base: float = checked(0.996, ge=0, le=1)  # target encoder EMA: linear from base to final
    momentum_final: float = checked(1.0, ge=0, le=1)

    def validate(self) -> None:
        if self.pred_dim % self.pred_heads or self.pred_dim % 4:
            raise ConfigError(f"method.pred_dim ({self.pred_dim}) must be divisible by 4 and by "
                              f"method.pred_heads ({self.pred_heads})")
        for key in ("target_scale", "target_aspect", "context_scale"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ConfigError(f"method.{key} must be (lo, hi) with lo <= hi, got ({lo}, {hi})")


@register_method("ijepa", help="I-JEPA: predict an EMA encoder's representations of 4 target blocks from one "
                               "context block (Assran et al. 2023)")
class IJEPA(Method):
    """The context encoder (``self.backbone``) is evaluated; the paper evaluates the target encoder, its EMA."""

    Config = IJEPAConfig
    cfg: IJEPAConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the masks make the context and the targets
    default_optimizer = "adamw"
    base_lr = 1.25e-4  # I-JEPA: AdamW, lr 1e-3 at batch 2048; weight decay 0.04 (the paper raises it to 0.4)
    default_weight_decay = 0.04
    test_backbone = "vit-test"
    test_overrides = {"pred_dim": 16, "pred_depth": 1, "pred_heads": 2}

    def __init__(self, backbone, cfg: IJEPAConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        require_builtin_vit(backbone, "ijepa")
        c = self.cfg
        self.predictor = PredictorViT(backbone.num_features, dim=c.pred_dim, depth=c.pred_depth,
                                      heads=c.pred_heads)
        self.target = EMATeacher(backbone, LinearWarmup(c.momentum_base, c.momentum_final, 1.0))

    def masks(self, rows: int, grid: tuple[int, int], device: torch.device) -> MultiBlockMask:
        """Masks drawn for the global batch from the global torch RNG, this rank's ``rows`` kept
        (components/gather.py: splittable randomness; the smallest context is the global batch's)."""
        c = self.cfg
        m = multiblock_masking(global_rows(rows), grid, num_targets=c.num_targets, target_scale=c.target_scale,
                               target_aspect=c.target_aspect, context_scale=c.context_scale,
                               min_keep=c.min_keep, device=device)
        return MultiBlockMask(rank_rows(m.context, rows), rank_rows(m.targets, rows))

    @torch.no_grad()
    def target_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The target encoder's patch representations (B, N, D): final-norm tokens, layer-normed (no affine)."""
        h = typing.cast(ViT, self.target.teacher).forward_tokens(x)[:, 1:]
        return F.layer_norm(h.float(), (h.shape[-1],))

    def predict(self, x: torch.Tensor, m: MultiBlockMask) -> tuple[torch.Tensor, torch.Tensor]:
        """Context tokens (B, 1 + K_c, D) and predictions (B, M, K_t, D) of every target block."""
        bb = typing.cast(ViT, self.backbone)
        grid = bb.grid_for(x)
        b, n_blocks, k = m.targets.shape
        z = bb.forward_tokens(x, keep=m.context)  # the context encoder sees the context patches only
        pred = self.predictor(z.repeat_interleave(n_blocks, dim=0), m.context.repeat_interleave(n_blocks, dim=0),
                              m.targets.flatten(0, 1), grid)  # one pass per target block: (B·M, K_t, D)
        return z, pred.view(b, n_blocks, k, -1)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        bb = typing.cast(ViT, self.backbone)
        m = self.masks(x.shape[0], bb.grid_for(x), x.device)
        b, n_blocks, k = m.targets.shape
        h = self.target_tokens(x)
        target = gather_tokens(h, m.targets.flatten(1)).view(b, n_blocks, k, -1)  # (B, M, K_t, D)
        z, pred = self.predict(x, m)
        loss = jepa_loss(pred, target, self.cfg.loss)
        logs = {"ema_momentum": self.target.last_momentum.detach().clone(),
                "context_patches": torch.tensor(float(m.context.shape[1]))}
        return MethodOutput(loss=loss, logs=logs, embedding=z[:, 0].detach())
