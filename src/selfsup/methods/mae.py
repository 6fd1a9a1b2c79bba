"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

Per-sample random masking of 75% of the patches; the ViT encoder sees only the visible ones (no mask tokens),
a light decoder (own width/depth, learned mask token, own position embeddings) reconstructs every patch, and the
loss is the MSE on the masked patches only, by default against per-patch normalised pixels.
After pretraining the encoder is evaluated (pooled CLS token); MAE features probe linearly worse than
contrastive ones and shine under fine-tuning (see docs/vit-mim.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ..augment.masking import patchify, random_masking
from ..components.base import StepContext
from ..components.gather import global_rows, rank_rows
from ..config_checks import DIM_CAP, checked, dim
from ..errors import ConfigError
from ..heads.decoders import MAEDecoder
from ..losses.masked import masked_mse, normalize_patches
from .base import Method, MethodConfig, MethodOutput, ViewBatch, register_method

if TYPE_CHECKING:
    from ..backbones.timm_vit import TimmViT
    from ..backbones.vit import ViT


def require_vit(backbone, method: str):
    """MIM methods need token access (``forward_tokens``) and a ``patch_size``: a ViT backbone."""
    if not (hasattr(backbone, "forward_tokens") and hasattr(backbone, "patch_size")):
        raise ConfigError(f"method '{method}' needs a ViT backbone (--backbone vit-tiny, vit-small or vit), "
                          f"got {type(backbone).__name__}")


@dataclass
class MAEConfig(MethodConfig):
    mask_ratio: float = checked(0.75, gt=0, lt=1)
    decoder_dim: int = dim(128, ge=4)  # MAE uses 512 for ViT-B; a narrow decoder suits ViT-Tiny on 32 px images
    decoder_depth: int = checked(2, ge=1, cap=64)
    decoder_heads: int = checked(4, ge=1, cap=DIM_CAP)
    norm_pix_loss: bool = True  # target = per-patch normalised pixels (MAE's better setting)

    def validate(self) -> None:
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise ConfigError(f"method.decoder_dim ({self.decoder_dim}) must be divisible by 4 and by "
                              f"method.decoder_heads ({self.decoder_heads})")


@register_method("mae", help="MAE: mask 75% of patches, reconstruct their pixels with a light decoder (He et al. 2022)")
class MAE(Method):
    Config = MAEConfig
    cfg: MAEConfig
    default_augment = "crop-flip"
    n_views = 1  # one view of each image: the task makes its own inputs and targets from it
    default_optimizer = "adamw"
    base_lr = 1.5e-4  # MAE: blr 1.5e-4 at batch 256, AdamW betas (0.9, 0.95), weight decay 0.05
    default_weight_decay = 0.05
    test_backbone = "vit-test"
    test_overrides = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}

    def __init__(self, backbone, cfg: MAEConfig | None = None, **kw) -> None:
        super().__init__(backbone, cfg, **kw)
        require_vit(backbone, "mae")
        c = self.cfg
        p = backbone.patch_size
        self.decoder = MAEDecoder(backbone.num_features, p * p * backbone.in_channels, dim=c.decoder_dim,
                                  depth=c.decoder_depth, heads=c.decoder_heads)

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:
        x = batch.views[0]
        bb = cast("ViT | TimmViT", self.backbone)  # require_vit checked it in __init__
        grid = bb.grid_for(x)
        n = grid[0] * grid[1]
        # masks drawn for the global batch, this rank's rows kept (components/gather.py: splittable randomness)
        b = x.shape[0]
        m = random_masking(global_rows(b), n, self.cfg.mask_ratio, device=x.device)
        m = type(m)(*(rank_rows(t, b) for t in (m.ids_keep, m.ids_restore, m.mask)))
        latent = bb.forward_tokens(x, keep=m.ids_keep)  # (B, 1 + K, D): the encoder sees visible patches only
        pred = self.decoder(latent, m.ids_restore, grid)  # (B, N, p·p·C)
        target = patchify(x, bb.patch_size)
        if self.cfg.norm_pix_loss:
            target = normalize_patches(target)
        loss = masked_mse(pred, target, m.mask)
        return MethodOutput(loss=loss, embedding=latent[:, 0].detach())
