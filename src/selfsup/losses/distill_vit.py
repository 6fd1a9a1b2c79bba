"""Losses of the ViT self-distillation methods: iBOT's masked-patch distillation, DINOv2's KoLeo regulariser,
MSN's anchor/target cross-entropy and its prior-matching regulariser (me-max, PMSN's power law).

Argument order as everywhere: student/anchors first, teacher/targets second; targets are detached here. Global
batch statistics (KoLeo's nearest neighbours, the batch-averaged prediction) are the caller's to gather under
torchrun (``components/gather.py``); these functions see one tensor and are pure.

- :func:`masked_patch_distillation` — iBOT (Zhou et al. 2022, Eq. 2): the student's patch distribution at each
  masked position against the teacher's at the same position of the unmasked view; per image the mean over its
  masked patches, then the mean over images (images without a mask count 0, as in the authors' code).
- :func:`ibot_patch_loss` — the same with iBOT's target: the teacher's centred, sharpened softmax.
- :func:`koleo_loss` — DINOv2 (Oquab et al. 2024, Sec. 4; Sablayrolles et al. 2019): ``−mean_i log d_i``, d_i the
  distance of the L2-normalised x_i to its nearest neighbour in the batch.
- :func:`anchor_target_cross_entropy` — MSN (Assran et al. 2022, Eq. 2): every anchor view's prototype
  distribution against its image's (sharpened) target distribution.
- :func:`prior_kl` — MSN's me-max (Eq. 3: ``log K − H(p̄)``, the KL from p̄ to the uniform prior) and PMSN's
  (Assran et al. 2023) KL from p̄ to a given prior, optionally with p̄'s entries ranked to meet the prior's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .precision import fp32_loss


def _check_temp(value: float, name: str) -> None:
    if not value > 0:
        raise ConfigError(f"method.{name} must be > 0, got {value}")


@fp32_loss
def masked_patch_distillation(student_logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor,
                              student_temp: float = 0.1) -> torch.Tensor:
    """iBOT's patch loss ``(1/B) Σ_b (1/max(1, n_b)) Σ_{i: m_bi} −Σ_k q_bi[k] log softmax(s_bi / τ_s)[k]``.

    mask: (B, N) bool, True where the student's patch was masked; n_b its count in image b.
    student_logits: (M, K) and teacher_probs: (M, K) at the M = mask.sum() masked positions, in the row-major
    order of ``mask`` (what ``full[mask]`` gives for (B, N, K) tensors). The targets are probabilities (a
    centred softmax or Sinkhorn-Knopp codes), detached here. Scalar; 0 when nothing is masked.
    """
    _check_temp(student_temp, "student_temp")
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"masked_patch_distillation expects a (B, N) bool mask, got {mask.dtype} {tuple(mask.shape)}")
    m = int(mask.sum())
    if student_logits.ndim != 2 or student_logits.shape != teacher_probs.shape or student_logits.shape[0] != m:
        raise ValueError(f"masked_patch_distillation expects student and teacher (M, K) with M = {m} masked "
                         f"patches, got {tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}")
    ce = -(teacher_probs.detach() * F.log_softmax(student_logits / student_temp, dim=-1)).sum(dim=-1)  # (M,)
    counts = mask.sum(dim=1).clamp_min(1).to(ce.dtype)  # (B,)
    image = mask.nonzero()[:, 0]  # the image of each masked row, row-major like full[mask]
    return (ce / counts[image]).sum() / mask.shape[0]


@fp32_loss
def ibot_patch_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
                    mask: torch.Tensor, student_temp: float = 0.1, teacher_temp: float = 0.07) -> torch.Tensor:
    """iBOT: :func:`masked_patch_distillation` against ``softmax((t − c) / τ_t)``.

    student_logits, teacher_logits: (M, K) at the masked positions of ``mask`` (B, N); center: (K,) or (1, K),
    the patch centre. The teacher temperature comes from the caller's schedule. Scalar.
    """
    _check_temp(teacher_temp, "teacher_patch_temp")
    q = F.softmax((teacher_logits.detach() - center.detach().reshape(1, -1)) / teacher_temp, dim=-1)
    return masked_patch_distillation(student_logits, q, mask, student_temp)


@fp32_loss
def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo: ``−(1/B) Σ_i log(||x̂_i − x̂_{n(i)} + ε|| + ε)``, x̂ = x/||x||, n(i) = argmax_{j≠i} x̂_i·x̂_j.

    x: (B, D), B >= 2 (the CLS tokens of one global view). The nearest neighbour is the largest cosine (the
    smallest distance on the sphere); the gradient reaches both x_i and its neighbour, as in DINOv2's code, whose
    ``PairwiseDistance`` also adds ε to the difference (so a duplicate row gives a large finite loss). Scalar.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"koleo_loss expects (B, D) with B >= 2, got {tuple(x.shape)}")
    xn = F.normalize(x, dim=-1, eps=eps)
    with torch.no_grad():
        dots = xn @ xn.T
        dots.fill_diagonal_(float("-inf"))
        nn_idx = dots.argmax(dim=1)
    d = torch.linalg.vector_norm(xn - xn[nn_idx] + eps, dim=-1)
    return -torch.log(d + eps).mean()


@fp32_loss
def anchor_target_cross_entropy(anchor_logits: torch.Tensor, target_probs: torch.Tensor,
                                temperature: float = 0.1) -> torch.Tensor:
    """MSN: ``mean_{a,b} −Σ_k q_b[k] log softmax(l_ab / τ)[k]``.

    anchor_logits: (A, B, K), the cosine of each anchor view's embedding to the K prototypes; target_probs:
    (B, K), the image's target distribution (sharpened, or Sinkhorn codes), detached here. Scalar.
    """
    _check_temp(temperature, "temperature")
    if anchor_logits.ndim != 3 or target_probs.ndim != 2 or anchor_logits.shape[1:] != target_probs.shape:
        raise ValueError("anchor_target_cross_entropy expects anchors (A, B, K) and targets (B, K), got "
                         f"{tuple(anchor_logits.shape)} and {tuple(target_probs.shape)}")
    log_p = F.log_softmax(anchor_logits / temperature, dim=-1)
    return -(target_probs.detach().unsqueeze(0) * log_p).sum(dim=-1).mean()


@fp32_loss
def prior_kl(mean_probs: torch.Tensor, prior: torch.Tensor | None = None, *, ranked: bool = False,
             eps: float = 1e-12) -> torch.Tensor:
    """``KL(p̄ ‖ π) = Σ_k p̄_k (log p̄_k − log π_k)`` for the batch-averaged prediction p̄ (K,).

    ``prior`` None: the uniform π = 1/K, and the value is MSN's me-max regulariser ``log K − H(p̄)`` (>= 0,
    0 when every prototype is used equally). ``ranked``: p̄'s entries sorted in decreasing order meet π's sorted
    in decreasing order (PMSN's power law ranks the prototypes: the most used one takes the largest prior mass);
    this is the smallest KL over all assignments of prototypes to prior ranks (rearrangement inequality), so
    the regulariser does not care which prototype is which. p̄ is clamped at ``eps`` inside the log. Scalar.
    """
    if mean_probs.ndim != 1:
        raise ValueError(f"prior_kl expects the mean prediction (K,), got {tuple(mean_probs.shape)}")
    k = mean_probs.shape[0]
    p = mean_probs
    if prior is None:
        log_prior = torch.full_like(p, -math.log(k))
    else:
        if prior.shape != p.shape:
            raise ValueError(f"prior_kl: prior {tuple(prior.shape)} does not match the mean prediction "
                             f"{tuple(p.shape)}")
        log_prior = torch.log(prior.detach().to(p.dtype))
    if ranked:
        p = torch.sort(p, descending=True).values
        log_prior = torch.sort(log_prior, descending=True).values
    return (p * (torch.log(p.clamp_min(eps)) - log_prior)).sum()
