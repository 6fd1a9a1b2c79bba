"""SimMIM (Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling").

Random masking of mask units of ``mask_patch_size`` pixels (SimMIM: 32-px units over 16-px ViT patches, 60%
masked; :func:`~selfsup.augment.masking.unit_masking`); masked patch embeddings are replaced by a learned
mask token, the ViT encodes the whole sequence, and one linear layer maps each patch token to the raw pixels of
its patch. The target is the input view itself, i.e. the pixels normalised by the dataset's mean and std (as
SimMIM's code, which normalises with the ImageNet statistics); the loss is the L1 error over the masked patches
only. A ViT only: a ResNet would need its own masked convolution input, which SimMIM studies with Swin, not here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..augment.masking import patchify, unit_masking
from ..backbones.vit import ViT
from ..components.base import StepContext
from ..components.gather import global_rows, rank_rows
from ..config_checks import IMAGE_CAP, checked
from ..errors import ConfigError
from ..losses.masked import masked_l1
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .mae import require_vit

if TYPE_CHECKING:
    from ..backbones.timm_vit import TimmViT


@dataclass
class SimMIMConfig(MethodConfig):
    mask_ratio: float = checked(0.6, gt=0, lt=1)
    # SimMIM: 32-px mask units over 16-px patches (2×2 patches each); 0: twice backbone.patch_size (8 px over the
    # 4-px patches of 32-px images: a 4×4 grid of mask units on the 8×8 patch grid)
    mask_patch_size: int = checked(0, ge=0, cap=IMAGE_CAP, hint="0: twice backbone.patch_size")


@register_method("simmim", help="SimMIM: regress the raw pixels of randomly masked patches with one linear layer, "
                                "L1 loss (Xie et al. 2022)")
class SimMIM(Method):
    Config = SimMIMConfig
    cfg: SimMIMConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 5e-5  # SimMIM's ViT-B config: 1e-4 per 512 images (4e-4 at batch 2048), AdamW, weight decay 0.05
    default_weight_decay = 0.05
    test_backbone = "vit-test"

    def __init__(self, backbone, cfg: SimMIMConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        require_vit(backbone, "simmim")
        p = backbone.patch_size
        self.mask_patch_size = self.cfg.mask_patch_size or 2 * p
        if self.mask_patch_size % p:
            raise ConfigError(f"method.mask_patch_size ({self.mask_patch_size}) must be a multiple of "
                              f"backbone.patch_size ({p})")
        self.unit = self.mask_patch_size // p
        if isinstance(backbone, ViT):
            self.check_grid(backbone.grid)
        d = backbone.num_features
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.head = nn.Linear(d, p * p * backbone.in_channels)  # SimMIM's 1×1 conv + pixel shuffle, per token
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def check_grid(self, grid: tuple[int, int]) -> None:
        """A one-line error unless the patch grid splits into at least 2 mask units."""
        gh, gw = grid
        u = self.unit
        if gh % u or gw % u or (gh // u) * (gw // u) < 2:
            raise ConfigError(f"method.mask_patch_size={self.mask_patch_size}: a {gh}x{gw} grid of patches does not "
                              f"split into 2 or more mask units of {u}x{u} patches; pick a mask patch size that "
                              "divides the image size (0: twice backbone.patch_size)")

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        bb = cast("ViT | TimmViT", self.backbone)  # require_vit checked it in __init__
        grid = bb.grid_for(x)
        self.check_grid(grid)
        b = x.shape[0]
        # masks drawn for the global batch, this rank's rows kept (components/gather.py: splittable randomness)
        mask = rank_rows(unit_masking(global_rows(b), grid, self.unit, self.cfg.mask_ratio, device=x.device), b)
        tokens = bb.forward_tokens(x, mask=mask, mask_token=self.mask_token)
        pred = self.head(tokens[:, -mask.shape[1]:])  # (B, N, p·p·C): the patch tokens come last
        loss = masked_l1(pred, patchify(x, bb.patch_size), mask)
        return MethodOutput(loss=loss, embedding=tokens[:, 0].detach())
