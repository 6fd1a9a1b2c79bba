"""TiCo (Zhu et al. 2022, "TiCo: Transformation Invariance and Covariance Contrast for Self-Supervised Visual
Representation Learning"): agreement of two views plus a penalty on the embeddings' running covariance."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32_loss


@fp32_loss
def tico_loss(z: torch.Tensor, target: torch.Tensor, cov: torch.Tensor, beta: float = 0.9, rho: float = 8.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The TiCo loss (Eq. 3-4 and Algorithm 1 of the paper). Returns ``(loss, B)``.

    z: (N, D) online embeddings (gradient); target: (N, D) the other view's embeddings of the same images (the
    momentum encoder's, no gradient needed); both L2-normalised here; cov: (D, D) the running matrix C_{t−1}.
    With ``B = zᵀz / N`` (the batch's second-moment matrix, gradient kept) and ``C_t = β·C_{t−1} + (1 − β)·B``:

        L = −(1/N) Σ_i z_i·t_i + ρ·(1/N) Σ_i z_iᵀ C_t z_i

    The first term is transformation invariance, the second the covariance contrast: each embedding is pushed
    away from the directions the recent batches occupy, as if contrasted with an unbounded memory bank of past
    embeddings (§3.2). ``B`` is returned detached: the caller's running matrix becomes ``C_t`` (β·C + (1 − β)·B)
    after the step. As in the paper's pseudo-code and lightly's ``TiCoLoss``, the gradient flows through the
    current batch's share of C_t; lightly adds a constant 1 to the loss (no effect on the gradient), we do not.
    """
    if z.shape != target.shape or z.ndim != 2:
        raise ValueError(f"tico_loss expects two (N, D) tensors of the same shape, got {tuple(z.shape)} and "
                         f"{tuple(target.shape)}")
    if cov.shape != (z.shape[1], z.shape[1]):
        raise ValueError(f"tico_loss: covariance of shape {tuple(cov.shape)} for {z.shape[1]}-d embeddings")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    z, target = F.normalize(z, dim=1), F.normalize(target, dim=1)
    b = z.T @ z / z.shape[0]
    c = beta * cov.to(z.dtype) + (1.0 - beta) * b
    invariance = -(z * target).sum(dim=1).mean()
    contrast = ((z @ c) * z).sum(dim=1).mean()
    return invariance + rho * contrast, b.detach()
