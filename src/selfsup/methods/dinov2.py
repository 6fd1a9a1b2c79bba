"""DINOv2 (Oquab et al. 2024, "DINOv2: Learning Robust Visual Features without Supervision"), its training recipe
on our ViT: iBOT's two losses (``methods/ibot.py``) with the paper's changes.

- separate heads for the [CLS] (DINO) and patch (iBOT) losses ("untying the head weights");
- Sinkhorn-Knopp teacher centering (3 iterations, the teacher temperature as ε; SwAV's) instead of the EMA centre,
  for both losses, over the global batch (``components/sinkhorn_dist.py``: sums all-reduced, rows kept);
- the KoLeo regulariser (weight 0.1) on the student's L2-normalised global-view [CLS] tokens, one term per global
  view, the nearest neighbours taken in the global batch;
- layer-wise lr decay 0.9 during pretraining and a 0.2 lr factor on the patch embedding (the authors' code;
  :meth:`~selfsup.methods.base.Method.lr_scales`), uniform stochastic depth on the student, teacher EMA
  0.992 → 1.

Not here: register tokens (a ViT option, added to the backbone separately), the weight-decay schedule
(0.04 → 0.2), the high-resolution phase at the end, and the efficient drop-path that skips dropped samples' compute
(here dropped branches are multiplied by 0; same result, full compute).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config_checks import checked
from ..heads.token_heads import HEAD_MODES
from .base import register_method
from .ibot import CENTERING, IBOT, IBOTConfig


@dataclass
class DINOv2Config(IBOTConfig):
    patch_head: str = checked("separate", choices=HEAD_MODES)
    norm_last_layer: bool = True
    centering: str = checked("sinkhorn", choices=CENTERING)
    momentum_base: float = checked(0.992, ge=0, le=1)
    koleo_weight: float = checked(0.1, ge=0)
    drop_path_rate: float = checked(0.1, ge=0, lt=1)  # 0.1 for ViT-S/B-sized runs; 0.3-0.4 for ViT-L/g
    drop_path_uniform: bool = True
    layer_decay: float = checked(0.9, gt=0, le=1)
    patch_embed_lr_mult: float = checked(0.2, gt=0, le=1)


@register_method("dinov2", help="DINOv2: DINO + iBOT losses, separate heads, Sinkhorn-Knopp centering, KoLeo, "
                                "layer-wise lr decay, ViT (Oquab et al. 2024)")
class DINOv2(IBOT):
    """iBOT with DINOv2's defaults (module docstring)."""

    Config = DINOv2Config
    cfg: DINOv2Config
    base_lr = 2e-3  # DINOv2: 4e-3 · sqrt(batch / 1024), i.e. 2e-3 at batch 256; AdamW, weight decay 0.04
    default_weight_decay = 0.04
    test_overrides = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "teacher_temp_warmup": 0.0,
                      "mask_probability": 1.0}
