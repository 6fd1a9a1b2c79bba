"""Losses of the classic pretext tasks: masked reconstruction, rebalanced soft cross-entropy, CPC's InfoNCE,
and the non-saturating GAN losses of the context encoder. Predictions come first, targets second.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .contrastive import info_nce
from .precision import fp32_loss


@fp32_loss
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked region only (Pathak et al. 2016, Eq. 1: ``||M ⊙ (x - F((1-M) ⊙ x))||²``,
    averaged over the masked elements so the scale does not depend on the mask size).

    pred, target: (B, C, H, W); mask: (B, 1, H, W) or (B, C, H, W), 1 where pixels were removed. Scalar.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    m = mask.to(pred.dtype).expand_as(pred)
    return ((pred - target).pow(2) * m).sum() / m.sum().clamp_min(1.0)


@fp32_loss
def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Multinomial cross-entropy against soft targets, optionally rebalanced per pixel (Zhang et al. 2016, Eq. 2).

    logits, target: (N, Q) (target rows sum to 1); weight: (Q,) class weights, applied per row as
    ``weight[argmax target]``. Returns ``mean_n  -v_n Σ_q target_nq log softmax(logits)_nq``.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    ce = -(target * logp).sum(dim=1)
    if weight is not None:
        ce = ce * weight[target.argmax(dim=1)]
    return ce.mean()


def cpc_positive_index(batch: int, rows: int, cols: int, step: int, device=None) -> torch.Tensor:
    """For queries at grid rows ``0 … rows-step-1`` (B, rows-step, cols, flattened) the index of their positive key
    among all patches (B, rows, cols, flattened): the patch ``step`` rows below in the same image and column."""
    b = torch.arange(batch, device=device).view(-1, 1, 1)
    i = torch.arange(rows - step, device=device).view(1, -1, 1)
    j = torch.arange(cols, device=device).view(1, 1, -1)
    return (b * rows * cols + (i + step) * cols + j).flatten()


@fp32_loss
def cpc_info_nce(pred: torch.Tensor, z: torch.Tensor, step: int, temperature: float = 0.1,
                 normalize: bool = True) -> torch.Tensor:
    """CPC's InfoNCE for one prediction distance (van den Oord et al. 2018, Eq. 4; Hénaff et al. 2019).

    pred: (B, R - step, W, D) predictions from the context at rows ``0 … R-step-1``; z: (B, R, W, D) patch codes.
    The positive of a prediction at (b, i, j) is ``z[b, i+step, j]``; its negatives are every *other* patch of the
    batch (all positions of all images), so the positive is counted once, as the target, and never as a negative.
    ``normalize`` compares cosine similarities; otherwise raw dot products (the papers' bilinear score). Scalar.
    """
    b, r, w, d = z.shape
    if pred.shape != (b, r - step, w, d):
        raise ValueError(f"pred must be (B, R - step, W, D) = {(b, r - step, w, d)}, got {tuple(pred.shape)}")
    q = pred.reshape(-1, d)
    k = z.reshape(-1, d)
    if normalize:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    return info_nce(q, k, cpc_positive_index(b, r, w, step, z.device), temperature)


@fp32_loss
def gan_losses(d_real: torch.Tensor, d_fake_detached: torch.Tensor, d_fake_for_g: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-saturating GAN losses from discriminator logits (Goodfellow et al. 2014; Pathak et al. 2016, Eq. 2).

    d_real: D(real); d_fake_detached: D(fake.detach()) (trains D); d_fake_for_g: D(fake) computed with D's
    parameters detached (trains the generator only). Returns ``(d_loss, g_loss)``:
    ``d_loss = -log D(x) - log(1 - D(G(x̃)))``, ``g_loss = -log D(G(x̃))``, each averaged over the batch.
    """
    d_loss = (F.binary_cross_entropy_with_logits(d_real.float(), torch.ones_like(d_real, dtype=torch.float32))
              + F.binary_cross_entropy_with_logits(d_fake_detached.float(),
                                                   torch.zeros_like(d_fake_detached, dtype=torch.float32)))
    g_loss = F.binary_cross_entropy_with_logits(d_fake_for_g.float(),
                                                torch.ones_like(d_fake_for_g, dtype=torch.float32))
    return d_loss, g_loss
