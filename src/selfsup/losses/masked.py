"""Losses of masked image modelling, computed at masked positions only.

Argument order as everywhere: predictions first, targets second, then the mask (B, N) bool (True = masked).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32_loss


def _check(pred: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool or mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be bool {tuple(pred.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")


@fp32_loss
def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's normalised-pixel target: each patch (B, N, P) minus its mean, divided by its std (unbiased, as MAE)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


@fp32_loss
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE (He et al. 2022): ``Σ_{b,i} m_bi · mean_p (pred − target)²  /  Σ m_bi``.

    ``pred``, ``target`` (B, N, P) patch rows; ``mask`` (B, N). Visible patches contribute nothing.
    """
    _check(pred, mask)
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


@fp32_loss
def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BEiT (Bao et al. 2021): mean cross-entropy of ``logits`` (B, N, V) against token ids ``target`` (B, N)
    over the masked positions only."""
    _check(logits, mask)
    return F.cross_entropy(logits[mask].float(), target[mask])
