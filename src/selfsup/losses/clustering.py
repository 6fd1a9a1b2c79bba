"""Clustering losses. SwAV's swapped prediction (Caron et al. 2020, Eq. 1-2); DeepCluster-v2's cross-entropy to
k-means assignments (the same paper); SMoG's group-level contrast (Pang et al. 2022).

The code ``q_t`` of one view (from Sinkhorn-Knopp, :mod:`selfsup.components.sinkhorn`) is predicted from every
other view's prototype scores: ``ℓ(z_s, q_t) = −Σ_k q_t[k] log softmax(z_sᵀC / τ)[k]``, averaged over all pairs
of a code view t and a different view s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


@fp32_loss
def deepcluster_v2_loss(scores: torch.Tensor, targets: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """DeepCluster-v2 (Caron et al. 2020, Appendix): every crop predicts its image's k-means cluster.

    scores: (S, V, B, K) dot products of the V crops' unit embeddings with the K centroids of each of the S
    prototype sets; targets: (S, B) each image's cluster in each set. Returns
    ``(1/S) Σ_s mean_{v,b} −log softmax(scores[s, v, b] / τ)[targets[s, b]]``: the authors' code takes the
    cross-entropy over the concatenated crops of the batch for each set and averages the sets.
    """
    if not temperature > 0:
        raise ConfigError(f"method.temperature must be > 0, got {temperature}")
    s, v, b, k = scores.shape
    logits = scores.reshape(s * v * b, k) / temperature
    return F.cross_entropy(logits, targets[:, None, :].expand(s, v, b).reshape(-1))


@fp32_loss
def group_contrastive_loss(p: torch.Tensor, groups: torch.Tensor, targets: torch.Tensor,
                           temperature: float = 0.1) -> torch.Tensor:
    """SMoG's group-level contrast (Pang et al. 2022, Eq. 3): InfoNCE between an instance and the groups.

    p: (N, D) online predictions; groups: (G, D) group features; targets: (N,) the group of each instance's other
    view. Both sides are L2-normalised: ``mean_n −log exp(p̂_n·ĝ_t/τ) / Σ_g exp(p̂_n·ĝ_g/τ)``.
    """
    if not temperature > 0:
        raise ConfigError(f"method.temperature must be > 0, got {temperature}")
    logits = F.normalize(p, dim=1) @ F.normalize(groups, dim=1).T / temperature
    return F.cross_entropy(logits, targets)
