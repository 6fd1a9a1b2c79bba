"""IterNorm (Huang et al. 2019, "Iterative Normalization: Beyond Standardization towards Efficient Whitening").

Group-wise ZCA whitening of a batch of features without an eigen-decomposition: the D features are split into
``groups`` groups of m = D / groups; for each group the covariance ``Σ = εI + X_cᵀX_c / N`` of the centred
batch is normalised by its trace, ``Σ_N = Σ / tr(Σ)``, and T Newton-Schulz iterations
``P_{k+1} = (3P_k − P_k³ Σ_N) / 2`` (P_0 = I) approximate ``Σ_N^{-1/2}``; the output is
``X_c · P_T / sqrt(tr(Σ))`` ≈ ``X_c Σ^{-1/2}``. Gradients flow through the iterations (the paper's backward).

VIbCReg (Lee et al. 2021) puts it at the end of its projector. The batch statistics are those of the *global*
batch (sums all-reduced with :func:`~selfsup.components.gather.all_reduce_sum_with_grad`, as the CPU
SyncBatchNorm does), so two processes with batch B/2 whiten exactly as one with batch B. Like BatchNorm, training
forwards update a running mean and whitening matrix (momentum 0.1) that evaluation uses. The whitening runs in
float32 with autocast off (Newton iterations in bf16 do not converge to a whitening).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ..components.gather import all_reduce_sum_with_grad, global_rows
from ..errors import ConfigError


def newton_inverse_sqrt(sigma: torch.Tensor, iterations: int) -> torch.Tensor:
    """``Σ^{-1/2}`` (G, m, m) of symmetric positive definite ``sigma`` (G, m, m) by IterNorm's Newton iterations."""
    eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    r_tr = 1.0 / sigma.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
    sigma_n = sigma * r_tr
    p = eye
    for _ in range(iterations):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ sigma_n
    return p * r_tr.sqrt()


class IterNorm(nn.Module):
    """Whitens (N, dim) features in ``groups`` groups with ``iterations`` Newton steps (paper: T = 5)."""
    running_mean: torch.Tensor
    running_wm: torch.Tensor

    def __init__(self, dim: int, groups: int = 64, iterations: int = 5, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        if groups < 1 or dim % groups:
            raise ConfigError(f"method.iternorm_groups ({groups}) must divide method.proj_dim ({dim})")
        if iterations < 1:
            raise ConfigError(f"method.iternorm_iterations must be >= 1, got {iterations}")
        self.groups, self.iterations, self.eps, self.momentum = groups, iterations, eps, momentum
        m = dim // groups
        self.register_buffer("running_mean", torch.zeros(groups, 1, m))
        self.register_buffer("running_wm", torch.eye(m).repeat(groups, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.running_mean.shape[0] * self.running_mean.shape[2]:
            raise ValueError(f"IterNorm expects (N, {self.running_mean.numel()}) features, got {tuple(x.shape)}")
        dev = x.device.type
        off = torch.autocast(dev, enabled=False) if torch.amp.is_autocast_available(dev) else nullcontext()
        with off:
            n, d = x.shape
            x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            xg = x.reshape(n, self.groups, -1).transpose(0, 1)  # (G, N, m)
            if not self.training:
                return ((xg - self.running_mean.to(xg)) @ self.running_wm.to(xg)).transpose(0, 1).reshape(n, d)
            count = float(global_rows(n))
            mean = all_reduce_sum_with_grad(xg.sum(1, keepdim=True)) / count
            xc = xg - mean
            eye = torch.eye(xg.shape[-1], dtype=xg.dtype, device=xg.device)
            sigma = self.eps * eye + all_reduce_sum_with_grad(xc.transpose(1, 2) @ xc) / count
            wm = newton_inverse_sqrt(sigma, self.iterations)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean), self.momentum)
                self.running_wm.lerp_(wm.detach().to(self.running_wm), self.momentum)
            return (xc @ wm).transpose(0, 1).reshape(n, d)
