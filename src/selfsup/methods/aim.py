"""AIM (El-Nouby et al. 2024, "Scalable Pre-training of Large Autoregressive Image Models").

One view per image, read as a sequence of patches in raster order. The ViT runs with prefix-causal attention
(:func:`~selfsup.backbones.vit.prefix_causal_mask`): each sample draws a prefix length ``S`` uniformly in
[1, N − 1]; the first ``S`` patches attend to one another both ways, every later patch only to the patches before
it (and itself). A head of per-patch residual MLP blocks (:class:`~selfsup.heads.patch_mlp.PatchMLPHead`), fed the
final-norm tokens plus fixed sin-cos position embeddings, regresses from position ``i`` the pixels of patch
``i + 1``, normalised per patch (MAE's ``norm_pix``). The loss is the mean squared error over the non-prefix
patches only (``S … N − 1``): the prefix is context, never a target.

At evaluation the ViT runs bidirectionally on the whole image (no mask), as AIM's prefix training prepares it to.
Our ViT's CLS token (AIM has none) and any register tokens sit in the bidirectional prefix: they see the prefix
patches only, so nothing leaks from later patches.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

import torch

from ..augment.masking import patchify
from ..backbones.vit import ViT, prefix_causal_mask, sincos_pos_embed
from ..components.base import StepContext
from ..components.gather import global_rows, local_share, rank_rows
from ..config_checks import checked
from ..errors import ConfigError
from ..heads.patch_mlp import PatchMLPHead
from ..losses.masked import normalize_patches
from ..losses.predictive import next_patch_mse
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method
from .ijepa import require_builtin_vit


@dataclass
class AIMConfig(MethodConfig):
    head_depth: int = checked(2, ge=0, cap=64)  # residual MLP blocks in the head (AIM: 12 for its large trunks)
    norm_pix_loss: bool = True  # target = per-patch normalised pixels (AIM, as MAE)


@register_method("aim", help="AIM: prefix-causal ViT regressing the next patch's normalised pixels in raster "
                             "order (El-Nouby et al. 2024)")
class AIM(Method):
    Config = AIMConfig
    cfg: AIMConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the sequence of its patches is the task
    default_optimizer = "adamw"
    base_lr = 1.5e-4  # MAE's base lr at batch 256 (AIM's large-batch lr does not transfer to tiny ViTs)
    default_weight_decay = 0.05  # AIM: AdamW, weight decay 0.05
    test_backbone = "vit-test"
    test_overrides = {"head_depth": 1}

    def __init__(self, backbone, cfg: AIMConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        vit = require_builtin_vit(backbone, "aim")
        p = vit.patch_size
        self.head = PatchMLPHead(vit.num_features, p * p * vit.in_channels, depth=self.cfg.head_depth)

    def draw_prefix(self, rows: int, num_patches: int, device: torch.device) -> torch.Tensor:
        """Prefix lengths (rows,) uniform in [1, N − 1], drawn for the global batch from the global torch RNG
        (on the CPU) and this rank's rows kept (components/gather.py: splittable randomness)."""
        if num_patches < 2:
            raise ConfigError(f"aim needs at least 2 patches per image, got {num_patches}: use a smaller "
                              "backbone.patch_size")
        prefix = torch.randint(1, num_patches, (global_rows(rows),))
        return rank_rows(prefix, rows).to(device)

    def encode(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Final-norm tokens (B, 1 + N, D) under prefix-causal attention with per-sample prefixes ``prefix`` (B,)
        patches long; the CLS token and any registers join every sample's bidirectional prefix."""
        vit = typing.cast(ViT, self.backbone)
        grid = vit.grid_for(x)
        n, t = grid[0] * grid[1], vit.num_prefix_tokens
        mask = prefix_causal_mask(t + n, prefix.to(x.device) + t, device=x.device)  # (B, 1, T + N, T + N)
        return vit.forward_tokens(x, attn_mask=mask)

    def predict(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Next-patch predictions (B, N, p·p·C) from :meth:`encode`'s tokens: row ``i`` predicts patch ``i + 1``
        (the last row predicts nothing)."""
        patches = tokens[:, 1:]
        pos = sincos_pos_embed(patches.shape[-1], grid, device=patches.device).to(patches.dtype)
        return self.head(patches + pos)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        vit = typing.cast(ViT, self.backbone)
        grid = vit.grid_for(x)
        n = grid[0] * grid[1]
        prefix = self.draw_prefix(x.shape[0], n, x.device)
        tokens = self.encode(x, prefix)
        pred = self.predict(tokens, grid)
        target = patchify(x, vit.patch_size)
        if self.cfg.norm_pix_loss:
            target = normalize_patches(target)
        # the number of target patches varies per sample: weight by this rank's share of the global count
        loss = next_patch_mse(pred, target, prefix) * local_share((n - prefix).sum())
        return MethodOutput(loss=loss, logs={"prefix": prefix.float().mean().detach()},
                            embedding=tokens[:, 0].detach())
