"""Clustering losses. SwAV's swapped prediction (Caron et al. 2020, Eq. 1-2).

The code ``q_t`` of one view (from Sinkhorn-Knopp, :mod:`selfsup.components.sinkhorn`) is predicted from every
other view's prototype scores: ``ℓ(z_s, q_t) = −Σ_k q_t[k] log softmax(z_sᵀC / τ)[k]``, averaged over all pairs
of a code view t and a different view s.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .distillation import cross_view_cross_entropy
from .precision import fp32_loss


@fp32_loss
def swapped_prediction(scores: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """scores: (V, B, K) prototype scores of all views (the code views first); codes: (V_c, B, K) soft codes,
    rows summing to 1. Returns the scalar SwAV loss."""
    if not temperature > 0:
        raise ConfigError(f"method.temperature must be > 0, got {temperature}")
    return cross_view_cross_entropy(scores, codes, temperature)
