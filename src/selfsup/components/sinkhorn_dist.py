"""Sinkhorn-Knopp over rows spread across ranks: DINOv2's teacher centering (Oquab et al. 2024, Sec. 4, after
SwAV) and MSN's optional target balancing (Assran et al. 2022, the authors' code).

The same codes as :func:`selfsup.components.sinkhorn.sinkhorn_knopp` (rows sum to 1, column sums approach
R/K for R rows in all), but the sums are all-reduced instead of the rows gathered: each rank keeps its own rows,
which may differ in number (DINOv2's masked patch tokens: each rank masks a different count). In one process the
two functions agree. ``epsilon`` is the temperature: DINOv2 uses its teacher temperature, MSN its sharpening
``τ·T`` on the cosine scores.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from .gather import all_reduce_sum_, world_size
from .sinkhorn import check_epsilon


@torch.no_grad()
def _global_max(x: torch.Tensor) -> torch.Tensor:
    m = x.max() if x.numel() else torch.full((), float("-inf"), device=x.device, dtype=x.dtype)
    m = m.reshape(1).clone()
    if world_size() > 1:
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m


@torch.no_grad()
def distributed_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int = 3) -> torch.Tensor:
    """Codes Q (R_local, K) for this rank's scores (R_local, K); every rank calls it with its own rows (0 rows
    allowed). ``Q ∝ exp(scores/ε)``, then ``iterations`` alternations: each column's total mass over all ranks'
    rows set to 1/K, each row's to 1/R; returned ×R, so rows sum to 1. Float32 (float64 stays float64)."""
    check_epsilon(epsilon, "method.teacher_temp")
    if iterations < 1:
        raise ValueError(f"distributed_sinkhorn needs >= 1 iteration, got {iterations}")
    if scores.ndim != 2:
        raise ValueError(f"distributed_sinkhorn expects scores (R, K), got {tuple(scores.shape)}")
    s = scores.detach().float() if scores.dtype != torch.float64 else scores.detach()
    k = s.shape[1]
    rows = all_reduce_sum_(torch.tensor([float(s.shape[0])], device=s.device, dtype=s.dtype))
    if float(rows) == 0:
        return s.clone()
    # the global max cancels in the first normalisation (it must be the same on every rank) and avoids overflow
    top = _global_max(s)
    if not torch.isfinite(top).all():
        top = torch.zeros_like(top)
    q = torch.exp((s - top) / epsilon)
    q = q / all_reduce_sum_(q.sum().reshape(1)).clamp_min(1e-30)
    for _ in range(iterations):
        q = q / all_reduce_sum_(q.sum(dim=0, keepdim=True)).clamp_min(1e-30) / k
        q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-30) / rows
    return q * rows
