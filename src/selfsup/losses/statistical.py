"""Statistical and coding-rate objectives on many views' embeddings: no negatives, no teacher needed.

Every function takes the views stacked as ``z: (V, B, D)`` (view v of image b), the layout of
:func:`~selfsup.losses.distillation.dino_loss`; methods gather the global batch along B before calling them.

- :func:`mmcr_loss` — MMCR (Yerxa et al. 2023, Eq. 3): the nuclear norm of the matrix of per-image centroids
  of the normalised views is maximised (``−‖C‖_*``), optionally with ``+ λ·mean_b ‖Z_b‖_*`` (the per-image
  manifolds kept small).
- :func:`total_coding_rate` and :func:`patch_invariance` — EMP-SSL (Tong et al. 2023, Eq. 1–3): the coding rate
  ``R(Z) = ½ log det(I + d/(b ε²) Zᵀ Z)`` of each patch's embeddings is maximised, and each patch's embedding is
  pulled to the mean of its image's patches (cosine similarity).
- :func:`whiten` and :func:`wmse_loss` — W-MSE (Ermolov et al. 2021, Eq. 2–5): the views are whitened (Cholesky)
  within random sub-batches, then the MSE of the L2-normalised whitened views is taken over every pair of views.
- :func:`epps_pulley`, :func:`sigreg` and :func:`lejepa_prediction` — LeJEPA (Balestriero & LeCun 2025): SIGReg
  tests each 1-D projection of the embeddings on random unit directions against N(0, 1) with the Epps–Pulley
  statistic (Eq. 9–11, Algorithm 1), and every view predicts the mean embedding of the global views.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32_loss


def _check_views(z: torch.Tensor, name: str, min_views: int = 1) -> None:
    if z.ndim != 3:
        raise ValueError(f"{name} expects (V, B, D) stacked views, got shape {tuple(z.shape)}")
    if z.shape[0] < min_views or z.shape[1] < 2:
        raise ValueError(f"{name} needs at least {min_views} view(s) of at least 2 images, got {tuple(z.shape)}")


# --------------------------------------------------------------------------------------------------- MMCR
@fp32_loss
def mmcr_loss(z: torch.Tensor, lambd: float = 0.0, target: torch.Tensor | None = None) -> torch.Tensor:
    """MMCR: ``−‖C‖_* + λ/B Σ_b ‖Z_b‖_*``. z: (V, B, D) raw embeddings (normalised here). Scalar.

    ``C`` (B, D) holds the centroids ``c_b = mean_v ẑ_vb`` of the L2-normalised views ẑ, ``Z_b`` (V, D) image
    b's normalised views; ‖·‖_* is the nuclear norm (sum of singular values). The global term is summed, not
    averaged, over the batch, as in the paper's Eq. 3 and the authors' code (its scale grows like √B·min(B, D)).

    ``target`` (V, B, D): the momentum encoder's embeddings of the same views (the authors' momentum variant):
    the centroids are then ``(mean_v ẑ_vb + mean_v ẑ'_vb) / 2``; the per-image term stays on the online views,
    as in the authors' code (lightly concatenates both into the per-image matrices instead).
    """
    _check_views(z, "mmcr_loss")
    zn = F.normalize(z, dim=-1)
    centroids = zn.mean(0)
    if target is not None:
        if target.shape != z.shape:
            raise ValueError(f"mmcr_loss: target {tuple(target.shape)} must match z {tuple(z.shape)}")
        centroids = (centroids + F.normalize(target, dim=-1).mean(0)) / 2
    loss = -torch.linalg.svdvals(centroids).sum()
    if lambd:
        loss = loss + lambd * torch.linalg.svdvals(zn.transpose(0, 1)).sum() / z.shape[1]
    return loss


# ------------------------------------------------------------------------------------------------ EMP-SSL
@fp32_loss
def total_coding_rate(z: torch.Tensor, eps_sq: float = 0.2) -> torch.Tensor:
    """EMP-SSL's R(Z) = ½ log det(I_d + d/(b ε²) Zᵀ Z) of each view. z: (V, B, d). Returns (V,).

    ``eps_sq`` is ε² of the paper's formula; the authors' code calls it ``eps`` and divides by it unsquared
    (``d / (b·eps)``, eps = 0.2), so ``eps_sq = 0.2`` is their setting.
    """
    _check_views(z, "total_coding_rate")
    v, b, d = z.shape
    gram = z.transpose(1, 2) @ z  # (V, d, d)
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    return torch.logdet(eye + (d / (b * eps_sq)) * gram) / 2


@fp32_loss
def patch_invariance(z: torch.Tensor) -> torch.Tensor:
    """EMP-SSL's invariance term: ``−mean_v mean_b cos(z_vb, z̄_b)`` with ``z̄_b = mean_v z_vb``. z: (V, B, D).

    The mean is not detached (the authors' code lets the gradient through it).
    """
    _check_views(z, "patch_invariance")
    return -F.cosine_similarity(z, z.mean(0, keepdim=True), dim=-1).mean()


# -------------------------------------------------------------------------------------------------- W-MSE
@fp32_loss
def whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cholesky whitening of x: (N, D) → (N, D) with identity covariance.

    ``Σ = (x − x̄)ᵀ(x − x̄) / (N − 1)``, ``(1 − eps)·Σ + eps·I = L Lᵀ`` (Cholesky), output ``(x − x̄) L⁻ᵀ``. Needs
    N > D when eps = 0 (a rank-deficient Σ has no Cholesky factor). Gradients flow through x̄, Σ and L.
    """
    n, d = x.shape
    if n <= d and eps == 0:
        raise ValueError(f"whiten needs more rows than dimensions ({n} rows, {d} dims); raise w_size or w_eps")
    xc = x - x.mean(0, keepdim=True)
    cov = xc.T @ xc / (n - 1)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    chol = torch.linalg.cholesky((1 - eps) * cov + eps * eye)
    # (x_c L^{-T})^T = L^{-1} x_c^T: one triangular solve
    return torch.linalg.solve_triangular(chol, xc.T, upper=False).T


@fp32_loss
def wmse_loss(z: torch.Tensor, perms: torch.Tensor, w_size: int, eps: float = 0.0) -> torch.Tensor:
    """W-MSE: mean over the ``I`` permutations and every pair of views of ``2 − 2·mean_b ⟨ŵ_ib, ŵ_jb⟩``. Scalar.

    z: (V, B, D); perms: (I, B) a permutation of the batch per whitening iteration (w_iter). Each permutation is
    cut into ``B // w_size`` contiguous sub-batches (each at least ``w_size`` rows; the authors' code needs B to
    be a multiple of w_size, we spread the remainder over the groups); each view is whitened within each
    sub-batch on its own (:func:`whiten`), the whitened rows ŵ are L2-normalised, and the normalised MSE
    ``‖ŵ_i − ŵ_j‖² = 2 − 2⟨ŵ_i, ŵ_j⟩`` is averaged over the batch, the ``V(V−1)/2`` pairs and the iterations.
    """
    _check_views(z, "wmse_loss", min_views=2)
    v, b, _ = z.shape
    if perms.ndim != 2 or perms.shape[1] != b:
        raise ValueError(f"wmse_loss: perms must be (w_iter, {b}), got {tuple(perms.shape)}")
    n_groups = max(1, b // w_size)
    total = z.new_zeros(())
    for perm in perms:
        w = torch.empty_like(z)
        for idx in torch.tensor_split(perm, n_groups):
            for i in range(v):
                w[i, idx] = whiten(z[i, idx], eps)
        w = F.normalize(w, dim=-1)
        for i in range(v - 1):
            for j in range(i + 1, v):
                total = total + 2 - 2 * (w[i] * w[j]).sum(-1).mean()
    return total / (perms.shape[0] * v * (v - 1) / 2)


# ------------------------------------------------------------------------------------------------- LeJEPA
@fp32_loss
def epps_pulley(x: torch.Tensor, t_max: float = 3.0, n_points: int = 17) -> torch.Tensor:
    """The Epps–Pulley statistic of each column of x: (N, M) against N(0, 1). Returns (M,).

    ``T = N ∫ |φ_N(t) − φ(t)|² w(t) dt`` with the empirical characteristic function
    ``φ_N(t) = mean_n exp(i t x_n)``, the standard normal's ``φ(t) = exp(−t²/2)`` and the Gaussian weight
    ``w(t) = exp(−t²/2)`` (LeJEPA, Eq. 11). The integrand is even in t (φ_N(−t) is the conjugate of φ_N(t)), so
    it is integrated by the trapezoidal rule on ``n_points`` knots over [0, t_max] and doubled, as in the
    authors' library (t_max 3, 17 knots; the paper's Algorithm 1 integrates [−5, 5] directly):
    ``|φ_N(t) − φ(t)|² = (mean cos(t x) − φ(t))² + (mean sin(t x))²``.
    """
    if x.ndim != 2 or n_points < 2 or t_max <= 0:
        raise ValueError(f"epps_pulley expects (N, M) samples, t_max > 0, n_points >= 2; got {tuple(x.shape)}, "
                         f"{t_max}, {n_points}")
    t = torch.linspace(0, t_max, n_points, dtype=x.dtype, device=x.device)
    phi = torch.exp(-t.square() / 2)
    dt = t_max / (n_points - 1)
    weights = torch.full_like(t, 2 * dt)
    weights[0] = weights[-1] = dt  # trapezoid on [0, t_max], doubled for [−t_max, 0]
    xt = x.unsqueeze(-1) * t  # (N, M, T)
    err = (xt.cos().mean(0) - phi).square() + xt.sin().mean(0).square()  # (M, T)
    return x.shape[0] * (err @ (weights * phi))


@fp32_loss
def sigreg(z: torch.Tensor, directions: torch.Tensor, t_max: float = 3.0, n_points: int = 17) -> torch.Tensor:
    """SIGReg: the Epps–Pulley statistic of ``z_v @ a_m`` for each view v and unit direction a_m, averaged.

    z: (V, B, D); directions: (D, M) unit columns (resampled every step by the caller). Scalar. Each view is
    tested on its own (the paper's ``mean(SIGReg(emb) for emb in views)``).
    """
    _check_views(z, "sigreg")
    if directions.ndim != 2 or directions.shape[0] != z.shape[-1]:
        raise ValueError(f"sigreg: directions must be ({z.shape[-1]}, M), got {tuple(directions.shape)}")
    return torch.stack([epps_pulley(view @ directions, t_max, n_points).mean() for view in z]).mean()


@fp32_loss
def lejepa_prediction(z: torch.Tensor, n_global: int) -> torch.Tensor:
    """LeJEPA's prediction loss: ``mean_{v,b,d} (μ_bd − z_vbd)²`` with μ_b the mean of the first ``n_global``
    (global) views of image b. z: (V, B, D), global views first. Scalar. No stop-gradient on μ (the paper's)."""
    _check_views(z, "lejepa_prediction")
    if not 1 <= n_global <= z.shape[0]:
        raise ValueError(f"lejepa_prediction: n_global must be in [1, {z.shape[0]}], got {n_global}")
    centers = z[:n_global].mean(0, keepdim=True)
    return (centers - z).square().mean()

