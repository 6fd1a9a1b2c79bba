"""Redundancy-reduction losses on two views' embeddings z1, z2 (N, D): no negatives, no teacher.

- :func:`barlow_twins_loss` — Zbontar et al. 2021, Eq. 1: the cross-correlation C of the batch-standardised
  embeddings is pushed to the identity: ``Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²``. The diagonal gives invariance,
  the off-diagonal decorrelates the dimensions (so they cannot all carry the same, collapsed, information).
- VICReg — Bardes et al. 2022, Eq. 1-6: ``λ·invariance + μ·variance + ν·covariance`` with
  :func:`invariance_loss` (MSE), :func:`variance_loss` (hinge keeping each dimension's std above γ: the explicit
  anti-collapse term) and :func:`covariance_loss` (decorrelation), combined by :func:`vicreg_loss`.
- VIbCReg — Lee et al. 2021: VICReg's loss with the covariance term replaced by :func:`decorrelation_loss`, the
  mean squared off-diagonal entry of the (Pearson) correlation matrix, combined by :func:`vibcreg_loss`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32_loss


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, name: str) -> None:
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"{name} expects two (N, D) tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"{name} needs a batch of at least 2, got {z1.shape[0]}")


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


@fp32_loss
def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """C (D, D): ``C_ij = Σ_b ẑ1_bi ẑ2_bj / N`` with ẑ standardised per dimension over the batch (biased std)."""
    def std(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    z1, z2 = std(z1.float()), std(z2.float())
    return z1.T @ z2 / z1.shape[0]


@fp32_loss
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Barlow Twins: ``Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²``. z1, z2: (N, D). Scalar."""
    _check_pair(z1, z2, "barlow_twins_loss")
    c = cross_correlation(z1, z2)
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = _off_diagonal(c).pow(2).sum()
    return on + lambd * off


@fp32_loss
def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """VICReg s(z1, z2): mean squared error over all N·D entries."""
    return F.mse_loss(z1, z2)


@fp32_loss
def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg v(z): ``mean_j max(0, γ − sqrt(Var_b(z_bj) + ε))`` with the unbiased variance. z: (N, D)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


@fp32_loss
def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """VICReg c(z): ``Σ_{i≠j} Cov(z)_ij² / D`` with the unbiased covariance over the batch. z: (N, D)."""
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    return _off_diagonal(cov).pow(2).sum() / d


@fp32_loss
def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """VICReg: ``λ s(z1, z2) + μ (v(z1) + v(z2)) / 2 + ν (c(z1) + c(z2))``. z1, z2: (N, D). Scalar.

    (The variance term averages the two branches as in the official code; the covariance term sums them.)
    """
    _check_pair(z1, z2, "vicreg_loss")
    return (sim_weight * invariance_loss(z1, z2)
            + var_weight * (variance_loss(z1, gamma) + variance_loss(z2, gamma)) / 2
            + cov_weight * (covariance_loss(z1) + covariance_loss(z2)))


@fp32_loss
def decorrelation_loss(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """VIbCReg's feature decorrelation: ``(1/D²) Σ_{i≠j} Corr(z)_ij²``, Corr the Pearson correlation over the
    batch. z: (N, D). Unlike VICReg's covariance term it does not grow with the features' scale, so it cannot be
    lowered by shrinking them, and its weight (ν = 200 in the paper) is set independently of the variance term.

    The authors' code standardises each dimension, then L2-normalises it over the batch, then averages the squared
    off-diagonal entries over all D² entries: the same correlation (the standardisation cancels), the same 1/D².
    """
    n, d = z.shape
    zc = z - z.mean(dim=0)
    zn = zc / torch.sqrt(zc.pow(2).sum(dim=0) + eps)
    return _off_diagonal(zn.T @ zn).pow(2).sum() / (d * d)


@fp32_loss
def vibcreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                 cov_weight: float = 200.0, gamma: float = 1.0) -> torch.Tensor:
    """VIbCReg: ``λ s(z1, z2) + μ (v(z1) + v(z2)) / 2 + ν (f(z1) + f(z2))`` with f = :func:`decorrelation_loss`.
    z1, z2: (N, D), the IterNorm-whitened projections. Scalar. (The two branches' terms are combined as in
    :func:`vicreg_loss`, which is what the authors' code does.)"""
    _check_pair(z1, z2, "vibcreg_loss")
    return (sim_weight * invariance_loss(z1, z2)
            + var_weight * (variance_loss(z1, gamma) + variance_loss(z2, gamma)) / 2
            + cov_weight * (decorrelation_loss(z1) + decorrelation_loss(z2)))
