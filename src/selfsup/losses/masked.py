"""Losses of masked image modelling (MAE, BEiT, SimMIM, MaskFeat, data2vec), computed at masked positions only, and
data2vec's layer-averaged teacher targets.

Argument order as everywhere: predictions first, targets second, then the mask (B, N) bool (True = masked).
"""
from __future__ import annotations

import math

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


@fp32_loss
def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SimMIM (Xie et al. 2022): ``Σ_{b,i} m_bi · mean_p |pred − target|  /  Σ m_bi``.

    ``pred``, ``target`` (B, N, P) patch rows; ``mask`` (B, N). With patches of equal size this is SimMIM's code's
    loss: the L1 error of every masked pixel and channel, summed and divided by their number.
    """
    _check(pred, mask)
    per_patch = (pred - target).abs().mean(dim=-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


@fp32_loss
def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     beta: float = 2.0) -> torch.Tensor:
    """data2vec (Baevski et al. 2022): ``Σ_{b,i} m_bi · (1/√D) Σ_d ℓ_β(pred − target)  /  Σ m_bi``.

    ``ℓ_β(e) = e²/(2β)`` for ``|e| < β``, ``|e| − β/2`` otherwise (smooth L1); ``beta = 0``: the squared
    error ``e²``. ``pred``, ``target`` (B, N, D) token features; ``mask`` (B, N). The sum over features
    scaled by 1/√D is the authors' code's (its ``loss_scale`` default).
    """
    _check(pred, mask)
    if beta < 0:
        raise ValueError(f"smooth L1 beta must be >= 0, got {beta}")
    e = pred - target
    if beta > 0:
        a = e.abs()
        per = torch.where(a < beta, 0.5 * e * e / beta, a - 0.5 * beta)
    else:
        per = e * e
    per_token = per.sum(dim=-1) / math.sqrt(pred.shape[-1])
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


@fp32_loss
def layer_average_targets(layers: torch.Tensor, block_norm: bool = True, final_norm: bool = False,
                          eps: float = 1e-5) -> torch.Tensor:
    """data2vec's regression targets (Baevski et al. 2022): the mean of the teacher's top-K block outputs.

    ``layers`` (K, B, N, D). ``block_norm``: each block's output is first normalised per token over its D
    features without learned parameters, ``(y − mean_d y) / sqrt(var_d y + eps)`` (biased variance: a
    parameter-less layer norm, i.e. an instance norm of one token's features); ``final_norm``: the same
    normalisation of the average. Returns (B, N, D).
    """
    if layers.ndim != 4:
        raise ValueError(f"layers must be (K, B, N, D), got shape {tuple(layers.shape)}")
    d = layers.shape[-1]
    y = F.layer_norm(layers, (d,), eps=eps) if block_norm else layers
    y = y.mean(dim=0)
    return F.layer_norm(y, (d,), eps=eps) if final_norm else y
