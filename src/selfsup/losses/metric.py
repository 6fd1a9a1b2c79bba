"""Classic metric-learning losses over a batch of (anchor, positive) pairs.

Every loss takes ``anchor`` (N, D) and ``positive`` (N, D): row i of ``positive`` is the positive of anchor i and
the rows j ≠ i are its negatives (in self-supervised use: two augmented views of N images). Distances are
Euclidean, ``d_ij = ||anchor_i − positive_j||``; callers L2-normalise first where the paper does.

- :func:`margin_contrastive_loss`: Chopra, Hadsell & LeCun 2005 / Hadsell et al. 2006.
- :func:`triplet_loss`: Schroff et al. 2015 (FaceNet), with all / batch-hard (Hermans et al. 2017) / semi-hard mining.
- :func:`npair_loss`: Sohn 2016, multi-class N-pair loss; the same math as InfoNCE at temperature 1 on
  unnormalised embeddings, so it calls the shared :func:`~selfsup.losses.contrastive.info_nce` kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .contrastive import info_nce
from .precision import fp32_loss

TRIPLET_MINING = ("all", "batch-hard", "semi-hard")


def check_margin(margin: float, name: str = "margin") -> None:
    if not margin >= 0:
        raise ValueError(f"{name} must be >= 0, got {margin}")


def _check_pairs(anchor: torch.Tensor, positive: torch.Tensor, name: str) -> None:
    if anchor.ndim != 2 or anchor.shape != positive.shape or anchor.shape[0] < 2:
        raise ValueError(f"{name} expects two (N, D) tensors of the same shape with N >= 2, got "
                         f"{tuple(anchor.shape)} and {tuple(positive.shape)}")


def _sq_dists(anchor: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """(N, N) squared distances ``||a_i − p_j||²`` via the Gram matrix (no (N, N, D) tensor), clamped at 0."""
    a, p = anchor.float(), positive.float()
    return (a.pow(2).sum(1)[:, None] + p.pow(2).sum(1)[None, :] - 2 * a @ p.T).clamp_min(0)


def _off_diagonal(n: int, device: torch.device) -> torch.Tensor:
    return ~torch.eye(n, dtype=torch.bool, device=device)


@fp32_loss
def margin_contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Pairwise margin loss: ``½·mean_i d_ii² + ½·mean_{i≠j} max(0, margin − d_ij)²``.

    Positive pairs are pulled together; negative pairs are pushed apart until they are ``margin`` apart. The two
    means keep positives and the N(N−1) negatives equally weighted. Returns a scalar.
    """
    _check_pairs(anchor, positive, "margin_contrastive_loss")
    check_margin(margin)
    d2 = _sq_dists(anchor, positive)  # (N, N)
    d = d2.clamp_min(1e-12).sqrt()  # the clamp keeps the gradient finite at d = 0
    pos = d2.diagonal().mean()
    neg = F.relu(margin - d[_off_diagonal(d.shape[0], d.device)]).pow(2).mean()
    return 0.5 * pos + 0.5 * neg


@fp32_loss
def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, margin: float = 0.2, mining: str = "semi-hard"
                 ) -> torch.Tensor:
    """FaceNet's triplet loss on squared distances: ``max(0, d²(a, p) − d²(a, n) + margin)``.

    mining: "all" averages over every triplet (i, i, j≠i); "batch-hard" takes, per anchor, the closest negative;
    "semi-hard" takes the closest negative that is farther than the positive (FaceNet §3.2), or the farthest
    negative when none is (as TensorFlow-Addons does). Returns the mean over anchors (or triplets for "all").
    """
    _check_pairs(anchor, positive, "triplet_loss")
    check_margin(margin)
    if mining not in TRIPLET_MINING:
        raise ValueError(f"mining must be one of {', '.join(TRIPLET_MINING)}, got '{mining}'")
    d2 = _sq_dists(anchor, positive)  # (N, N)
    n = d2.shape[0]
    neg_mask = _off_diagonal(n, d2.device)
    d_ap = d2.diagonal()[:, None]  # (N, 1)
    if mining == "all":
        return F.relu(d_ap - d2 + margin)[neg_mask].mean()
    inf = torch.tensor(float("inf"), device=d2.device)
    if mining == "batch-hard":
        d_an = torch.where(neg_mask, d2, inf).min(dim=1, keepdim=True).values
    else:
        farther = neg_mask & (d2 > d_ap)
        closest_farther = torch.where(farther, d2, inf).min(dim=1, keepdim=True).values
        farthest = torch.where(neg_mask, d2, -inf).max(dim=1, keepdim=True).values
        d_an = torch.where(farther.any(dim=1, keepdim=True), closest_farther, farthest)
    return F.relu(d_ap - d_an + margin).mean()


@fp32_loss
def npair_loss(anchor: torch.Tensor, positive: torch.Tensor, l2_reg: float = 0.002) -> torch.Tensor:
    """Multi-class N-pair loss: ``mean_i log(1 + Σ_{j≠i} exp(f_i·f⁺_j − f_i·f⁺_i))`` + ``l2_reg``·mean ||f||².

    Embeddings are NOT normalised (Sohn 2016 §3.2); the L2 term (over anchors and positives) keeps their norms
    small instead. The first term equals cross-entropy over the logits ``f_i·f⁺_j`` with target i.
    """
    _check_pairs(anchor, positive, "npair_loss")
    if not l2_reg >= 0:
        raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
    target = torch.arange(anchor.shape[0], device=anchor.device)
    loss = info_nce(anchor.float(), positive.float(), target, temperature=1.0)
    reg = 0.5 * (anchor.float().pow(2).sum(1).mean() + positive.float().pow(2).sum(1).mean())
    return loss + l2_reg * reg
