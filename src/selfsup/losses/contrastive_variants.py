"""InfoNCE variants: the decoupled contrastive loss (DCL, DCLW) and the supervised contrastive loss (SupCon).

Both keep NT-Xent's setting (:func:`selfsup.losses.contrastive.nt_xent`: every embedding of the two-view batch is
an anchor, cosine similarities over τ) and change one thing: DCL takes the positive out of the denominator,
SupCon lets every image of the anchor's class be a positive.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .contrastive import check_temperature
from .precision import fp32_loss


@fp32_loss
def vmf_weights(z1: torch.Tensor, z2: torch.Tensor, sigma: float) -> torch.Tensor:
    """DCLW's negative von Mises–Fisher weights (Yeh et al. 2022, §3.2), one per positive pair, detached.

    z1, z2: (N, D) L2-normalised views. ``w_i = 2 − exp(s_i/σ) / mean_j exp(s_j/σ) = 2 − N·softmax_i(s/σ)`` with
    ``s_i = ⟨z1_i, z2_i⟩``: the weights average to 1 and a pair that agrees less than the others (a hard positive)
    weighs more. Returns (N,).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    s = (z1.detach() * z2.detach()).sum(dim=1)
    return 2.0 - z1.shape[0] * torch.softmax(s / sigma, dim=0)


@fp32_loss
def dcl_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, sigma: float | None = None
             ) -> torch.Tensor:
    """Decoupled contrastive loss (Yeh et al. 2022, "Decoupled Contrastive Learning", Eq. 6). Scalar.

    z1, z2: (N, D) projections of two views (normalised here). For anchor z_i^(k) (k ∈ {1, 2}) the loss is

        L_i^(k) = −w_i ⟨z_i^(1), z_i^(2)⟩/τ + log Σ_{l∈{1,2}, j≠i} exp(⟨z_i^(k), z_j^(l)⟩/τ)

    i.e. NT-Xent with the positive pair removed from the denominator (the 2N − 2 negatives only), which removes
    the negative-positive coupling of InfoNCE's gradient. ``sigma`` None: DCL (w_i = 1); a number: DCLW with the
    weights of :func:`vmf_weights` (the paper's σ = 0.5).

    Conventions. The mean over all 2N anchors (both directions), as lightly's ``DCLLoss`` (0.5·(loss0 + loss1))
    and our NT-Xent; the paper writes the sum over k and i, the authors' code returns one direction's mean and
    is called once per direction (twice our value: a learning-rate factor only). The weights are
    ``2 − N·softmax(s/σ)``, exactly the paper's ``2 − exp(s_i/σ)/E_j[exp(s_j/σ)]`` and the form lightly and the
    authors use; like lightly we detach them (a per-pair weight, not a term to optimise; the authors' code
    differentiates through them). With the batch gathered from every rank before the call, N and the mean in the
    weights are the global batch's (lightly weighs over each rank's local batch), so W processes compute what one
    process does.
    """
    check_temperature(temperature)
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"dcl_loss expects two (N, D) tensors of the same shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"dcl_loss needs at least 2 images (negatives), got {n}")
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    z = torch.cat([u1, u2])
    logits = z @ z.T / temperature
    idx = torch.arange(2 * n, device=z.device)
    same_image = (idx[:, None] % n) == (idx[None, :] % n)  # the anchor itself and its positive
    negatives = torch.logsumexp(logits.masked_fill(same_image, float("-inf")), dim=1)
    positive = (u1 * u2).sum(dim=1) / temperature
    if sigma is not None:
        positive = positive * vmf_weights(u1, u2, sigma)
    return (negatives - positive.repeat(2)).mean()


@fp32_loss
def supcon_loss(views: torch.Tensor, labels: torch.Tensor | None, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss L^sup_out (Khosla et al. 2020, "Supervised Contrastive Learning", Eq. 2).

    views: (V, N, D) projections of V ≥ 2 views of N images (normalised here); labels: (N,) int class labels, or
    None (every image its own class). Over the V·N embeddings, with A(i) every embedding but i and P(i) those of
    i's class (the other views of i included):

        L = (1 / VN) Σ_i  −1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )

    With no labels and V = 2, P(i) is the other view alone and this is NT-Xent (SimCLR) exactly. The authors'
    code also multiplies the loss by τ/τ_base (τ_base = 0.07); we keep Eq. 2 unscaled (a learning-rate factor).
    Scalar.
    """
    check_temperature(temperature)
    if views.ndim != 3 or views.shape[0] < 2:
        raise ValueError(f"supcon_loss expects (V, N, D) views with V >= 2, got {tuple(views.shape)}")
    v, n, _ = views.shape
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"supcon_loss expects (N,) = ({n},) labels, got {tuple(labels.shape)}")
    z = F.normalize(views.flatten(0, 1), dim=1)  # row k·N + i: view k of image i
    cls = (labels if labels is not None else torch.arange(n, device=z.device)).to(z.device).repeat(v)
    eye = torch.eye(v * n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (cls[:, None] == cls[None, :]) & ~eye
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / positive.sum(dim=1)
    return -per_anchor.mean()
