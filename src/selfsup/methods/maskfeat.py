"""MaskFeat for images (Wei et al. 2022, "Masked Feature Prediction for Self-Supervised Visual Pre-Training").

Block-wise masking of 40% of the patches (BEiT's masking, as MaskFeat on images); masked patch embeddings are
replaced by a learned mask token, the ViT encodes the whole sequence, and a linear head predicts, at masked
positions only, the histograms of oriented gradients of each patch (:func:`~selfsup.augment.hog.hog_patches`:
[-1, 0, 1] gradients, 9 unsigned orientation bins, cells of half the patch size, 8 px on 16-px patches as
MaskFeat, L2-normalised per patch and RGB channel), computed batched on the view's device. Loss: the mean
squared error over the masked patches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..augment.hog import HOG_NORMS, hog_dim, hog_patches
from ..augment.masking import block_masking
from ..components.base import StepContext
from ..components.gather import global_rows, rank_rows
from ..config_checks import DIM_CAP, IMAGE_CAP, checked
from ..errors import ConfigError
from ..losses.masked import masked_mse
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .mae import require_vit

if TYPE_CHECKING:
    from ..backbones.timm_vit import TimmViT
    from ..backbones.vit import ViT


@dataclass
class MaskFeatConfig(MethodConfig):
    mask_ratio: float = checked(0.4, gt=0, lt=1)
    # smallest masked block (BEiT/MaskFeat: 16 on a 14x14 grid; 4 suits an 8x8 grid)
    min_block_patches: int = checked(4, ge=1, cap=DIM_CAP)
    hog_bins: int = checked(9, ge=2, cap=360)  # unsigned orientation bins over [0, π)
    hog_cell: int = checked(0, ge=0, cap=IMAGE_CAP, hint="0: half backbone.patch_size (8 px on 16-px patches)")
    hog_norm: str = checked("patch", choices=HOG_NORMS)  # L2 per patch and channel; "cell": per cell


@register_method("maskfeat", help="MaskFeat: predict the HOG features of block-masked patches (Wei et al. 2022)")
class MaskFeat(Method):
    Config = MaskFeatConfig
    cfg: MaskFeatConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 2e-4  # MMSelfSup's MaskFeat ViT-B: 1.6e-3 at batch 2048, AdamW (0.9, 0.999), weight decay 0.05
    default_weight_decay = 0.05
    test_backbone = "vit-test"

    def __init__(self, backbone, cfg: MaskFeatConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        require_vit(backbone, "maskfeat")
        c = self.cfg
        p = backbone.patch_size
        self.cell = c.hog_cell or max(1, p // 2)
        if p % self.cell:
            raise ConfigError(f"method.hog_cell ({self.cell}) must divide backbone.patch_size ({p})")
        d = backbone.num_features
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.head = nn.Linear(d, hog_dim(backbone.in_channels, p, self.cell, c.hog_bins))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """The HOG rows (B, N, C·(p/cell)²·bins) of the view's patches."""
        p = cast("ViT | TimmViT", self.backbone).patch_size
        return hog_patches(x, p, self.cell, self.cfg.hog_bins, norm=self.cfg.hog_norm)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        bb = cast("ViT | TimmViT", self.backbone)  # require_vit checked it in __init__
        grid = bb.grid_for(x)
        b, n = x.shape[0], grid[0] * grid[1]
        # masks drawn for the global batch, this rank's rows kept (components/gather.py: splittable randomness)
        mask = rank_rows(block_masking(global_rows(b), grid, self.cfg.mask_ratio,
                                       min_patches=self.cfg.min_block_patches, device=x.device), b)
        target = self.targets(x)
        tokens = bb.forward_tokens(x, mask=mask, mask_token=self.mask_token)
        pred = self.head(tokens[:, -n:])  # (B, N, HOG dim); only masked rows enter the loss
        loss = masked_mse(pred, target, mask)
        return MethodOutput(loss=loss, embedding=tokens[:, 0].detach())
