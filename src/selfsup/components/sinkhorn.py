"""Sinkhorn-Knopp for SwAV's codes (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", Sec. 3.1; Cuturi 2013).

Given prototype scores S (B, K), find Q = diag(u)·exp(S/ε)·diag(v) whose rows (samples) each sum to 1 and whose
columns (prototypes) each sum to B/K: every prototype gets an equal share of the batch (equipartition), which is
what stops all samples from being assigned to one prototype (collapse). A few alternating normalisations suffice
(3 in the paper). ε = 0.05 keeps the codes soft.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError


def check_epsilon(epsilon: float, name: str = "method.epsilon") -> None:
    if not epsilon > 0:
        raise ConfigError(f"{name} must be > 0, got {epsilon}")


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes Q (B, K) for scores (B, K): rows sum to 1, column sums approach B/K.

    Computed in float32 (float64 stays float64); the last normalisation is over rows, so every row sums to 1
    exactly and the column sums are within the iterations' tolerance of B/K.
    """
    check_epsilon(epsilon)
    if iterations < 1:
        raise ConfigError(f"method.sinkhorn_iterations must be >= 1, got {iterations}")
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp expects scores (B, K), got {tuple(scores.shape)}")
    s = scores.detach().float() if scores.dtype != torch.float64 else scores.detach()
    b, k = s.shape
    # subtracting the global max does not change Q (it cancels in the first normalisation) but avoids overflow
    q = torch.exp((s - s.max()) / epsilon)
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-30) / k  # each prototype: total mass 1/K
        q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-30) / b  # each sample: total mass 1/B
    return q * b
