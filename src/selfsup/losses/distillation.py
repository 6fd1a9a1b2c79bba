"""Self-distillation losses: a student matches a target it cannot move (stop-gradient on the target).

Argument order everywhere: student/predictions first, teacher/targets second. Targets are detached here, so a
caller cannot forget the stop-gradient the methods rely on.

- :func:`normalized_mse` — BYOL (Grill et al. 2020, Eq. 2): ``||p/||p|| − z/||z||||² = 2 − 2·cos(p, z)``.
- :func:`negative_cosine` — SimSiam (Chen & He 2021, Eq. 1): ``−cos(p, stopgrad(z))``.
- :func:`cross_view_cross_entropy` — the multi-view cross-entropy DINO and SwAV share: every target view against
  every student view except itself.
- :func:`dino_loss` — DINO (Caron et al. 2021, Eq. 1 and 3): the teacher's centred, sharpened softmax as target.
- :func:`mean_target_negative_cosine` — FastSiam (Pototzky et al. 2022): SimSiam's D against the mean of the other
  views' projections.
- :func:`relational_loss` — ReSSL (Zheng et al. 2021): the teacher's sharpened relation to a queue as target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .precision import fp32_loss


def _check_pair(p: torch.Tensor, z: torch.Tensor, name: str) -> None:
    if p.shape != z.shape or p.ndim != 2:
        raise ValueError(f"{name} expects two (N, D) tensors of the same shape, got {tuple(p.shape)} and {tuple(z.shape)}")


@fp32_loss
def normalized_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's loss: mean over the batch of ``2 − 2·cos(p_i, z_i)``. p: (N, D) predictions, z: (N, D) targets."""
    _check_pair(p, z, "normalized_mse")
    cos = F.cosine_similarity(p.float(), z.detach().float(), dim=-1)
    return (2 - 2 * cos).mean()


@fp32_loss
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's loss D(p, z): mean over the batch of ``−cos(p_i, stopgrad(z_i))``; in [−1, 1]."""
    _check_pair(p, z, "negative_cosine")
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


@fp32_loss
def cross_view_cross_entropy(student_logits: torch.Tensor, target_probs: torch.Tensor,
                             temperature: float) -> torch.Tensor:
    """Mean over ordered pairs (target view t, student view s ≠ t) and samples of ``−Σ_k q_t[k] log p_s[k]``.

    student_logits: (V_s, B, K), ``p_s = softmax(logits_s / temperature)``; target_probs: (V_t, B, K),
    probabilities, detached here. Student view ``i < V_t`` is the same image crop as target view ``i`` and is
    skipped for it (DINO's "all pairs except same view"; SwAV's swapped prediction). Returns a scalar.
    """
    if student_logits.ndim != 3 or target_probs.ndim != 3 or student_logits.shape[1:] != target_probs.shape[1:]:
        raise ValueError("cross_view_cross_entropy expects student (V_s, B, K) and targets (V_t, B, K), got "
                         f"{tuple(student_logits.shape)} and {tuple(target_probs.shape)}")
    vs, vt = student_logits.shape[0], target_probs.shape[0]
    if vt > vs:
        raise ValueError(f"{vt} target views but only {vs} student views")
    if vs < 2:
        raise ValueError("cross_view_cross_entropy needs at least 2 student views")
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (V_s, B, K)
    q = target_probs.detach().float()
    # ce[t, s] = mean_b −Σ_k q[t, b, k] log_p[s, b, k]
    ce = -torch.einsum("tbk,sbk->ts", q, log_p) / q.shape[1]
    keep = ~torch.eye(vt, vs, dtype=torch.bool, device=ce.device)
    return ce[keep].mean()


@fp32_loss
def dino_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINO: ``H(softmax((g_t − c)/τ_t), softmax(g_s/τ_s))`` averaged over view pairs (teacher ≠ student view).

    student_logits: (V_s, B, K) for all crops (global ones first); teacher_logits: (V_t, B, K) for the global
    crops; center: (1, K) or (K,). The teacher temperature comes from the caller's schedule. Scalar.
    """
    if not student_temp > 0:
        raise ConfigError(f"method.student_temp must be > 0, got {student_temp}")
    if not teacher_temp > 0:
        raise ConfigError(f"method.teacher_temp must be > 0, got {teacher_temp}")
    q = F.softmax((teacher_logits.detach().float() - center.reshape(1, 1, -1)) / teacher_temp, dim=-1)
    return cross_view_cross_entropy(student_logits, q, student_temp)


@fp32_loss
def mean_target_negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """FastSiam (Pototzky et al. 2022): each view's prediction predicts the mean of the other views' targets.

    p: (V, B, D) predictions, z: (V, B, D) projections (detached here), V >= 2. Loss
    ``(1/V) Σ_i D(p_i, stopgrad(mean_{j≠i} z_j))``, D the negative cosine (:func:`negative_cosine`, averaged over
    the batch). The mean is taken over the raw projections, before the cosine normalises the target (lightly's
    FastSiam; the paper averages the other views' embeddings). With V = 2 the target of each view is the other
    view's projection: SimSiam's symmetrised loss.
    """
    if p.shape != z.shape or p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"mean_target_negative_cosine expects (V, B, D) predictions and targets with V >= 2, got "
                         f"{tuple(p.shape)} and {tuple(z.shape)}")
    v = p.shape[0]
    z = z.detach()
    targets = (z.sum(dim=0, keepdim=True) - z) / (v - 1)  # (V, B, D): row i is the mean over j ≠ i
    cos = F.cosine_similarity(p, targets, dim=-1)  # (V, B); fp32_loss computes in float32 (float64 stays)
    return -cos.mean()


@fp32_loss
def relational_loss(student: torch.Tensor, teacher: torch.Tensor, keys: torch.Tensor, student_temp: float = 0.1,
                    teacher_temp: float = 0.04, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ReSSL (Zheng et al. 2021, Eq. 4-5): the student's relation to a set of keys matches the teacher's, sharpened.

    student: (N, D) student embeddings of the strong view; teacher: (N, D) EMA-teacher embeddings of the weak view
    (detached here); keys: (K, D) the queue of earlier teacher embeddings; all L2-normalised by the caller.
    ``p_t = softmax(t·Kᵀ/τ_t)``, ``p_s = softmax(s·Kᵀ/τ_s)``, loss ``mean_i −Σ_k p_t[i, k] log p_s[i, k]``
    (τ_t < τ_s sharpens the target). ``mask``: optional (K,) or (N, K) bool, True where a key is left out of both
    relations (rows of the queue not yet written); at least one key per row must stay. Scalar.
    """
    if not student_temp > 0:
        raise ConfigError(f"method.temperature must be > 0, got {student_temp}")
    if not teacher_temp > 0:
        raise ConfigError(f"method.teacher_temp must be > 0, got {teacher_temp}")
    _check_pair(student, teacher, "relational_loss")
    keys = keys.detach()
    s_logits = student @ keys.T / student_temp  # fp32_loss computes in float32 (float64 stays float64)
    t_logits = teacher.detach() @ keys.T / teacher_temp
    if mask is not None:
        mask = mask.expand_as(s_logits)
        s_logits, t_logits = s_logits.masked_fill(mask, float("-inf")), t_logits.masked_fill(mask, float("-inf"))
    q = F.softmax(t_logits, dim=1)
    log_p = F.log_softmax(s_logits, dim=1)
    terms = q * log_p if mask is None else (q * log_p).masked_fill(mask, 0.0)
    return -terms.sum(dim=1).mean()
