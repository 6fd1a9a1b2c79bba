"""A running class histogram: the empirical prior over quantised targets (colorization's ab bins).

Zhang et al. 2016 estimate the ab-bin prior once on ImageNet; here it is accumulated from the targets seen in
training, so any dataset works without a preparatory pass. The counts are a buffer: checkpoints and resumed runs
keep them.

Like every shared part, the prior changes only in ``after_step``: ``forward`` :meth:`~ClassPrior.observe` s the
batch's targets, and :meth:`~ClassPrior.probs` already includes what was observed in this step (the loss of step t
is rebalanced with the targets of steps <= t, including every micro-batch so far under gradient accumulation);
the engine's ``after_step`` commits the staged counts.
"""
from __future__ import annotations

import torch

from .base import SharedPart, Staged, StepContext
from .gather import all_reduce_sum_


class ClassPrior(SharedPart):
    """``counts`` (Q,) float: summed (soft) target mass per class since the start of training."""
    counts: torch.Tensor

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(num_classes))
        self._staged = Staged()  # this step's (1, Q) target sums, one row per call; not checkpointed

    @torch.no_grad()
    def observe(self, targets: torch.Tensor) -> None:
        """Stage target distributions ``(N, Q)`` (rows sum to 1); :meth:`after_step` adds them to ``counts``."""
        self._staged.add(all_reduce_sum_(targets.detach().float().sum(dim=0, keepdim=True)))  # every rank's

    def _with_staged(self) -> torch.Tensor:
        staged = self._staged.peek()
        return self.counts if staged is None else self.counts + staged[0].sum(dim=0)

    def after_step(self, ctx: StepContext) -> None:
        if len(self._staged):
            self.counts.copy_(self._with_staged())
            self._staged.clear()

    def probs(self) -> torch.Tensor:
        """The prior (Q,) with this step's observations; uniform before any."""
        counts = self._with_staged()
        total = counts.sum()
        uniform = torch.full_like(counts, 1.0 / counts.numel())
        return torch.where(total > 0, counts / total.clamp_min(1e-12), uniform)  # no host sync
