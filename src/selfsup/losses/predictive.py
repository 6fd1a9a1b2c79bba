"""Losses of predictive methods on a ViT's patch tokens: I-JEPA's regression in representation space and AIM's
next-patch pixel regression.

Argument order as everywhere: predictions first, targets second.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32_loss

JEPA_LOSSES = ("smooth_l1", "l2")


@fp32_loss
def jepa_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """I-JEPA (Assran et al. 2023): the mean over every target patch and channel of ``ℓ(pred − target)``.

    ``pred``, ``target`` (..., D): the predictor's outputs and the (layer-normed, detached) target encoder's
    representations at the same target positions. ``kind="smooth_l1"`` is the authors' code
    (``F.smooth_l1_loss``, β = 1: ``½e²`` for ``|e| < 1``, ``|e| − ½`` above); ``"l2"`` the paper's text
    (the mean squared error).
    """
    if pred.shape != target.shape:
        raise ValueError(f"jepa_loss: predictions {tuple(pred.shape)} and targets {tuple(target.shape)} differ")
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    if kind == "l2":
        return F.mse_loss(pred, target)
    raise ValueError(f"jepa_loss: kind must be one of {', '.join(JEPA_LOSSES)}, got '{kind}'")


@fp32_loss
def next_patch_mse(pred: torch.Tensor, target: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """AIM (El-Nouby et al. 2024): next-patch regression in raster order, on the non-prefix patches only.

    ``pred`` (B, N, P): the output at patch position ``i`` predicts patch ``i + 1``; ``target`` (B, N, P) the
    (per-patch normalised) pixels; ``prefix`` (B,) int, each sample's prefix length ``S`` (1 ≤ S < N). Loss:
    ``Σ_b Σ_{j=S_b}^{N−1} mean_p (pred[b, j−1] − target[b, j])²  /  Σ_b (N − S_b)``.
    """
    if pred.shape != target.shape or pred.ndim != 3 or prefix.shape != pred.shape[:1]:
        raise ValueError(f"next_patch_mse: predictions {tuple(pred.shape)}, targets {tuple(target.shape)} and "
                         f"prefix {tuple(prefix.shape)} do not fit (B, N, P), (B, N, P), (B,)")
    n = pred.shape[1]
    per_patch = (pred[:, :-1] - target[:, 1:]).pow(2).mean(dim=-1)  # (B, N-1): target j = 1..N-1
    j = torch.arange(1, n, device=pred.device)
    m = (j.unsqueeze(0) >= prefix.to(pred.device).unsqueeze(1)).to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)
