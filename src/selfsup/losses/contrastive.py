"""Contrastive losses: one InfoNCE kernel, NT-Xent (SimCLR) as its in-batch special case, NNCLR's loss.

Chen et al. 2020 (SimCLR), "A Simple Framework for Contrastive Learning of Visual Representations":
for 2N L2-normalised embeddings, the loss of anchor i with positive j is
``-log( exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ) )`` over the 2N−1 other embeddings (one positive, 2N−2 negatives),
averaged over all 2N anchors. Oord et al. 2018 (InfoNCE) / He et al. 2020 (MoCo) use the same form with the
keys of a queue as negatives.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .precision import fp32_loss


def check_temperature(temperature: float, name: str = "temperature") -> None:
    if not temperature > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}")


@fp32_loss
def info_nce(query: torch.Tensor, keys: torch.Tensor, positive: torch.Tensor, temperature: float,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each query against all keys, the positive key being the target.

    query: (N, D) and keys: (M, D) shared by all queries, or (N, M, D) one set per query (memory-bank
    negatives), both L2-normalised; positive: (N,) index into keys' M axis;
    mask: optional (N, M) bool, True where a key must be ignored (e.g. the query itself). Returns a scalar.
    """
    check_temperature(temperature)
    if keys.ndim == 3:
        logits = torch.einsum("nd,nmd->nm", query, keys) / temperature
    else:
        logits = query @ keys.T / temperature
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits.float(), positive)


@fp32_loss
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


@fp32_loss
def nce_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, log_norm: torch.Tensor | float) -> torch.Tensor:
    """Binary NCE of Wu et al. 2018 (NPID, eq. 5-6) and Misra & van der Maaten 2020 (PIRL, eq. 3-4).

    With P(i|v) = exp(s/τ)/Z, noise P_n = 1/n and m noise samples per positive, h = P/(P + m·P_n) is the
    probability that a pair comes from the data. ``L = −log h(pos) − Σ_k log(1 − h(neg_k))``, i.e.
    ``softplus(−(pos − c)) + Σ_k softplus(neg_k − c)`` with ``c = log(Z·m/n)``, passed here as ``log_norm``
    (NPID's Monte-Carlo estimate ``Z ≈ n·mean exp(s_neg/τ)`` makes ``c = log(m·mean exp(s_neg/τ))``).

    pos_logits: (N,) s/τ of the positive pairs; neg_logits: (N, m) of the noise pairs. Returns the mean over N.
    """
    if pos_logits.ndim != 1 or neg_logits.ndim != 2 or neg_logits.shape[0] != pos_logits.shape[0]:
        raise ValueError(f"nce_loss expects (N,) and (N, m) logits, got {tuple(pos_logits.shape)} and "
                         f"{tuple(neg_logits.shape)}")
    pos = F.softplus(-(pos_logits.float() - log_norm))
    neg = F.softplus(neg_logits.float() - log_norm).sum(dim=1)
    return (pos + neg).mean()


@fp32_loss
def nce_log_norm(neg_logits: torch.Tensor) -> torch.Tensor:
    """``c = log(m · mean exp(neg_logits))`` from (N, m) noise logits: NPID's normaliser estimate (a 0-d tensor)."""
    return torch.logsumexp(neg_logits.detach().float().flatten(), 0) - math.log(neg_logits.shape[0])


@fp32_loss
def nnclr_loss(nn1: torch.Tensor, nn2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
               temperature: float = 0.1) -> torch.Tensor:
    """NNCLR (Dwibedi et al. 2021, Eq. 2 and Algorithm 1): ``L(NN1, p2)/2 + L(NN2, p1)/2``, symmetric.

    nn1, nn2: (N, D) nearest neighbours in the support set of views 1 and 2 (constants: detached here);
    p1, p2: (N, D) predictions of views 1 and 2; all normalised here. ``L(nn, p)`` is the cross-entropy of each
    ``nn_i`` over ``exp(nn_i·p_k/τ)``, k over the N predictions of the other view, the positive being k = i:
    ``L_i = −log( exp(NN(z_i)·p_i⁺/τ) / Σ_k exp(NN(z_i)·p_k⁺/τ) )``, averaged over i. This is the paper's
    pseudo-code, as solo-learn and lightly implement it; the negatives are the other view's predictions only
    (no same-view negatives, unlike NT-Xent). Under torchrun the caller passes every rank's rows.
    """
    if not (nn1.shape == nn2.shape == p1.shape == p2.shape) or nn1.ndim != 2:
        raise ValueError("nnclr_loss expects four (N, D) tensors of the same shape, got "
                         f"{[tuple(t.shape) for t in (nn1, nn2, p1, p2)]}")
    positive = torch.arange(nn1.shape[0], device=nn1.device)

    def one_way(nn: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return info_nce(F.normalize(nn.detach(), dim=1), F.normalize(p, dim=1), positive, temperature)

    return 0.5 * one_way(nn1, p2) + 0.5 * one_way(nn2, p1)
