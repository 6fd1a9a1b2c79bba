"""data2vec for images (Baevski et al. 2022, "data2vec: A General Framework for Self-supervised Learning in
Speech, Vision and Language").

A student ViT sees the view with block-wise masked patches replaced by a learned mask token (BEiT's masking,
60% of the patches); an EMA teacher of the transformer blocks encodes the same view unmasked. The target of each
masked patch is the average of the teacher's top-K block outputs, each normalised per token over its features
without learned parameters (:func:`~selfsup.losses.masked.layer_average_targets`); a linear head regresses it
from the student's final-norm patch tokens with a smooth L1 loss (β = 2) at the masked positions only.

As in data2vec, teacher and student share the patch embedding, CLS token and position embeddings (the teacher
runs the student's ``embed`` without gradients): only the blocks are averaged. The teacher's momentum rises
linearly from ``momentum_base`` to ``momentum_final`` over the first ``momentum_anneal`` of training
(see docs/vit-mim.md for the values and where they differ from the paper's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..augment.masking import block_masking
from ..backbones.vit import ViT
from ..components.base import StepContext
from ..components.ema import EMATeacher
from ..components.gather import global_rows, rank_rows
from ..components.schedules import LinearWarmup
from ..config_checks import DIM_CAP, checked
from ..errors import ConfigError
from ..losses.masked import layer_average_targets, masked_smooth_l1
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .mae import require_vit

if TYPE_CHECKING:
    from ..backbones.timm_vit import TimmViT


def vit_blocks(backbone: "ViT | TimmViT") -> nn.ModuleList:
    """The transformer blocks of our ViT (``blocks``) or of timm's (``model.blocks``), in order."""
    return backbone.blocks if isinstance(backbone, ViT) else backbone.model.blocks


@dataclass
class Data2VecConfig(MethodConfig):
    mask_ratio: float = checked(0.6, gt=0, lt=1)  # data2vec: 60% (BEiT's block masking, BEiT itself 40%)
    # smallest masked block (data2vec/BEiT: 16 on a 14x14 grid; 4 suits an 8x8 grid)
    min_block_patches: int = checked(4, ge=1, cap=DIM_CAP)
    top_k: int = checked(0, ge=0, cap=DIM_CAP, hint="0: half the ViT's depth, data2vec's 6 of 12 blocks")
    block_norm: bool = True  # normalise each of the K block outputs per token before averaging
    final_norm: bool = False  # normalise the average per token (the authors' ImageNet config: instead of block_norm)
    loss_beta: float = checked(2.0, ge=0, hint="0: squared error")  # smooth L1's β (data2vec's vision setting)
    # teacher momentum: linear from momentum_base to momentum_final over the first momentum_anneal of training;
    # data2vec: 0.999 → 0.9999 over ~400k ImageNet updates; lower here, for runs of 10^3–10^5 steps
    momentum_base: float = checked(0.996, ge=0, le=1)
    momentum_final: float = checked(0.9995, ge=0, le=1)
    momentum_anneal: float = checked(1.0, gt=0, le=1)


@register_method("data2vec", help="data2vec: regress an EMA teacher's averaged top-K block outputs at block-masked "
                                  "patches (Baevski et al. 2022)")
class Data2Vec(Method):
    Config = Data2VecConfig
    cfg: Data2VecConfig
    default_augment = "crop-flip"
    n_views = 1  # one view: the student sees it masked, the teacher unmasked
    default_optimizer = "adamw"
    base_lr = 6.25e-5  # data2vec's ImageNet config: 5e-4 at batch 2048, Adam (0.9, 0.999), weight decay 0.05
    default_weight_decay = 0.05
    test_backbone = "vit-test"

    def __init__(self, backbone, cfg: Data2VecConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        require_vit(backbone, "data2vec")
        c = self.cfg
        bb = cast("ViT | TimmViT", backbone)
        self.top_k = c.top_k or max(1, bb.depth // 2)
        if self.top_k > bb.depth:
            raise ConfigError(f"method.top_k ({c.top_k}) is more than the ViT's {bb.depth} blocks")
        d = bb.num_features
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.head = nn.Linear(d, d)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.teacher = EMATeacher(vit_blocks(bb), LinearWarmup(c.momentum_base, c.momentum_final, c.momentum_anneal))

    @torch.no_grad()
    def targets(self, x: torch.Tensor, num_patches: int) -> torch.Tensor:
        """(B, N, D): the teacher's top-K block outputs on the unmasked view, at the patch tokens, averaged."""
        bb = cast("ViT | TimmViT", self.backbone)
        t = bb.embed(x)  # the student's patch embedding and positions: shared with the teacher, as in data2vec
        outs = []
        for blk in cast(nn.ModuleList, self.teacher.teacher):
            t = blk(t)
            outs.append(t[:, -num_patches:])
        return layer_average_targets(torch.stack(outs[-self.top_k:]), self.cfg.block_norm, self.cfg.final_norm)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        bb = cast("ViT | TimmViT", self.backbone)  # require_vit checked it in __init__
        grid = bb.grid_for(x)
        b, n = x.shape[0], grid[0] * grid[1]
        # masks drawn for the global batch, this rank's rows kept (components/gather.py: splittable randomness)
        mask = rank_rows(block_masking(global_rows(b), grid, self.cfg.mask_ratio,
                                       min_patches=self.cfg.min_block_patches, device=x.device), b)
        target = self.targets(x, n)
        tokens = bb.forward_tokens(x, mask=mask, mask_token=self.mask_token)
        pred = self.head(tokens[:, -n:])  # (B, N, D); only masked rows enter the loss
        loss = masked_smooth_l1(pred, target, mask, self.cfg.loss_beta)
        logs = {"ema_momentum": self.teacher.last_momentum.detach().clone(),
                "target_std": target[mask].float().std(dim=0).mean(),  # data2vec's collapse check: ≫ 0
                "pred_std": pred[mask].detach().float().std(dim=0).mean()}
        return MethodOutput(loss=loss, logs=logs, embedding=tokens[:, 0].detach())
