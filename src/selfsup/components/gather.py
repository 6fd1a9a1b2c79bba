"""Collectives for losses that need the global batch, with gradients that stay right under gradient averaging.

Every function here is the identity (or a plain local computation) when ``torch.distributed`` is not
initialised or the world has one process, so methods call them unconditionally.

The scaling rule (why the backward is an all-reduce *sum*)
-----------------------------------------------------------
The engine averages gradients over the W ranks (like DDP), so the objective it optimises is
``(1/W) Σ_k L_k`` where ``L_k`` is the loss computed on rank k. Take :func:`gather_with_grad`: rank k's
loss depends on every rank's embeddings through the gathered tensor, so the exact gradient of the objective
with respect to rank r's embeddings is ``(1/W) Σ_k ∂L_k/∂z_r``. Our backward returns ``Σ_k ∂L_k/∂z_r``
(all-reduce sum, then rank r's slice); the engine's average contributes the 1/W. Two cases follow:

- a loss over the *gathered* batch, computed identically on every rank (NT-Xent, Barlow Twins, VICReg):
  ``L_k = L`` for all k, so the objective is ``L`` itself — exactly one process with the full batch;
- a per-sample loss averaged over the rank's own rows: the average of W local means is the global mean.

A backward that returned only the local slice *without* the sum (or that summed and then was averaged a second
time) is off by a factor W — the bug class of lightly #1977 (Barlow Twins) and solo-learn #229. The
distributed test (tests/contract/test_distributed.py) checks every registered method against one process.

Hook for the MoCo branch: a queue must enqueue :func:`gather_no_grad` keys (every rank holds the same queue),
and shuffled BN permutes :func:`gather_no_grad` images with a permutation drawn from the (rank-synchronised)
global torch RNG, then takes the rank's rows with :func:`rank_rows`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward: all-reduce (sum) the gradient of the gathered tensor, keep this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        r = dist.get_rank()
        return grad[r * ctx.rows : (r + 1) * ctx.rows]


class _AllReduceWithGrad(torch.autograd.Function):
    """all-reduce (sum) forward; backward: all-reduce (sum) of the gradient (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per rank → (W·B, ...) in rank order, differentiable. Every rank must pass the same shape."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Σ over ranks of ``x`` (any shape), differentiable (used by the CPU SyncBatchNorm's statistics)."""
    if world_size() == 1:
        return x
    return _AllReduceWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per rank → (W·B, ...) in rank order, detached (targets: Sinkhorn codes, queue keys, codebooks)."""
    if world_size() == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_mean_(x: torch.Tensor) -> torch.Tensor:
    """In place: the mean of ``x`` over ranks (DINO's center, logged losses). Returns ``x``."""
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x.div_(world_size())
    return x


@torch.no_grad()
def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    """In place: the sum of ``x`` over ranks (counts). Returns ``x``."""
    if world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def local_share(count: torch.Tensor) -> torch.Tensor | float:
    """``count / mean over ranks of count`` (1.0 in one process), detached.

    For a loss normalised by a batch-wide count (``Σ loss / Σ mask``, the count varying per sample), multiplying
    rank k's ``sum_k / count_k`` by this factor gives ``sum_k / mean(count)``; the engine's average over ranks is
    then ``Σ_k sum_k / Σ_k count_k``, the one-process loss.
    """
    if world_size() == 1:
        return 1.0
    return count.detach().float() / all_reduce_mean_(count.detach().float().clone()).clamp_min(1e-12)


def global_rows(local_rows: int) -> int:
    """The number of rows of the global batch when every rank holds ``local_rows``."""
    return local_rows * world_size()


def rank_rows(x: torch.Tensor, local_rows: int) -> torch.Tensor:
    """This rank's rows of a global-batch tensor (W·B, ...) → (B, ...).

    Splittable randomness: a method draws per-sample noise (masks, ...) for the *global* batch
    (:func:`global_rows`) from the global torch RNG, which the engine keeps identical on every rank, and keeps
    its rows; the samples then get the same noise as in one process with the full batch.
    """
    r = rank()
    return x[r * local_rows : (r + 1) * local_rows]
