"""Contrastive losses: one InfoNCE kernel, NT-Xent (SimCLR) as its in-batch special case.

Chen et al. 2020 (SimCLR), "A Simple Framework for Contrastive Learning of Visual Representations":
for 2N L2-normalised embeddings, the loss of anchor i with positive j is
``-log( exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ) )`` over the 2N−1 other embeddings (one positive, 2N−2 negatives),
averaged over all 2N anchors. Oord et al. 2018 (InfoNCE) / He et al. 2020 (MoCo) use the same form with the
keys of a queue as negatives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def check_temperature(temperature: float, name: str = "temperature") -> None:
    if not temperature > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}")


def info_nce(query: torch.Tensor, keys: torch.Tensor, positive: torch.Tensor, temperature: float,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each query against all keys, the positive key being the target.

    query: (N, D) and keys: (M, D), both L2-normalised; positive: (N,) index into keys;
    mask: optional (N, M) bool, True where a key must be ignored (e.g. the query itself). Returns a scalar.
    """
    check_temperature(temperature)
    logits = query @ keys.T / temperature
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits.float(), positive)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over two views. z1, z2: (N, D) projections (normalised here). Scalar loss.

    Every one of the 2N embeddings is an anchor; its positive is the other view of the same image and the
    2N−2 other embeddings are its negatives.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent expects two (N, D) tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    idx = torch.arange(2 * n, device=z.device)
    positive = (idx + n) % (2 * n)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    return info_nce(z, z, positive, temperature, mask=self_mask)
