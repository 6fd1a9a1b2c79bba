"""A running second-moment matrix of embeddings, ``C ← β·C + (1 − β)·B`` after every step (TiCo's C).

The forward reads :attr:`MomentumCovariance.cov` (C_{t−1}) and :meth:`~MomentumCovariance.stage` s the batch's
matrix B; the engine's ``after_step`` folds it in. B is computed by the method from the embeddings of every rank
(gathered before the loss), so every rank stages the same matrix and the buffers stay identical across ranks.
Under gradient accumulation each micro-batch stages its B and ``after_step`` folds in their mean, the matrix of
the whole batch (the micro-batches have equal sizes).
"""
from __future__ import annotations

import torch

from .base import SharedPart, Staged, StepContext


class MomentumCovariance(SharedPart):
    """(dim, dim) buffer ``cov``, zeros at the start (as in the paper's Algorithm 1), momentum ``beta``."""
    cov: torch.Tensor

    def __init__(self, dim: int, beta: float) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"covariance momentum must be in [0, 1], got {beta}")
        self.beta = beta
        self.register_buffer("cov", torch.zeros(dim, dim))
        self._staged = Staged()

    def stage(self, batch_matrix: torch.Tensor, step: int | None = None) -> None:
        """Remember this forward's (dim, dim) batch matrix B for :meth:`after_step`."""
        if batch_matrix.shape != self.cov.shape:
            raise ValueError(f"batch matrix of shape {tuple(batch_matrix.shape)} for a {tuple(self.cov.shape)} "
                             "covariance")
        self._staged.add(batch_matrix[None], step=step)

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        staged = self._staged.take()
        if staged is None:
            return
        b = staged[0].mean(dim=0).to(self.cov.dtype)
        self.cov.mul_(self.beta).add_(b, alpha=1.0 - self.beta)
