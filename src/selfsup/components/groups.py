"""SMoG's group features (Pang et al. 2022, "Unsupervised Visual Representation Learning by Synchronous Momentum
Grouping", Sec. 3.2-3.3): G unit vectors that move with the instances assigned to them.

An instance belongs to the group of largest cosine similarity (:meth:`MomentumGroups.assign`). After every
optimizer step each group with at least one assigned instance in the (global) batch moves towards their mean,
``g ← normalize(β g + (1 − β) mean_{i: a(i) = g} ẑ_i)`` (β = 0.99), the synchronous momentum grouping. The
instances are the target (momentum-encoder) features whose assignments are the loss's targets, so a group moves
with the instances it was given (lightly's example updates with the online projections instead).

Every ``reset_interval`` steps the groups are reset by spherical k-means (:mod:`selfsup.components.kmeans`) of a
FIFO memory of recent target features (the paper's periodic re-clustering, Table 7b; every 300 iterations),
seeded by the step, so every rank and a resumed run reset identically. State (groups, memory) is in buffers;
under torchrun the staged features of every rank are gathered in ``after_step``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SharedPart, Staged, StepContext
from .gather import gather_no_grad
from .kmeans import nearest_centroid, spherical_kmeans
from .queue import FeatureQueue


class MomentumGroups(SharedPart):
    """``n_groups`` group features of size ``dim``; a memory of ``memory_size`` recent features for resets."""
    features: torch.Tensor

    def __init__(self, n_groups: int, dim: int, momentum: float = 0.99, reset_interval: int = 300,
                 memory_size: int = 32768, kmeans_iterations: int = 10, seed: int = 0) -> None:
        super().__init__()
        self.momentum, self.reset_interval = momentum, reset_interval
        self.kmeans_iterations, self.seed = kmeans_iterations, seed
        self.register_buffer("features", F.normalize(torch.randn(n_groups, dim), dim=1))
        self.memory = FeatureQueue(memory_size, dim)  # pushed from after_step below, never staged itself
        self._staged = Staged()

    @torch.no_grad()
    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """(N,) the group of each instance z (N, D): largest cosine similarity."""
        return nearest_centroid(F.normalize(z.float(), dim=1), self.features.float())

    def stage(self, *views: torch.Tensor, ctx: StepContext | None = None) -> None:
        """Target features (B, D) of each view, which move the groups (and enter the memory) after the optimizer
        step. Each view is gathered on its own, so the memory holds the global batch's rows in the order one
        process would push them (view by view, images in rank order): the k-means resets then match too."""
        self._staged.add(*views, step=None if ctx is None else ctx.step)

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        """One momentum step of every group that has instances in ``z`` (N, D)."""
        z = F.normalize(z.to(self.features.dtype), dim=1)
        onehot = F.one_hot(self.assign(z), self.features.shape[0]).to(z.dtype)  # (N, G)
        counts = onehot.sum(0)
        means = onehot.T @ z / counts.clamp_min(1)[:, None]
        moved = F.normalize(self.momentum * self.features + (1 - self.momentum) * means, dim=1)
        self.features.copy_(torch.where(counts[:, None] > 0, moved, self.features))

    @torch.no_grad()
    def reset(self, step: int) -> None:
        """The groups ← k-means centroids of the memory's rows (seeded by ``step``)."""
        rows = self.memory.valid()
        if rows.shape[0] > 0:
            centroids, _ = spherical_kmeans(F.normalize(rows, dim=1), self.features.shape[0],
                                            self.kmeans_iterations, seed=self.seed + step)
            self.features.copy_(centroids)

    def after_step(self, ctx: StepContext) -> None:
        staged = self._staged.take()
        if staged is not None:
            z = torch.cat([gather_no_grad(v) for v in staged])
            self.update(z)
            for part in z.split(self.memory.size):
                self.memory.push(F.normalize(part.float(), dim=1))
        if (ctx.step + 1) % self.reset_interval == 0:
            self.reset(ctx.step)
