"""A running class histogram: the empirical prior over quantised targets (colorization's ab bins).

Zhang et al. 2016 estimate the ab-bin prior once on ImageNet; here it is accumulated from the targets seen in
training (updated inside the method's forward, because it is part of the loss), so any dataset works without a
preparatory pass. The counts are a buffer: checkpoints and resumed runs keep them.
"""
from __future__ import annotations

import torch

from .base import SharedPart
from .gather import all_reduce_sum_


class ClassPrior(SharedPart):
    """``counts`` (Q,) float: summed (soft) target mass per class since the start of training."""
    counts: torch.Tensor

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("counts", torch.zeros(num_classes))

    @torch.no_grad()
    def update(self, targets: torch.Tensor) -> None:
        """Add target distributions ``(N, Q)`` (rows sum to 1) to the histogram."""
        self.counts += all_reduce_sum_(targets.detach().float().sum(dim=0))  # torchrun: every rank's targets

    def probs(self) -> torch.Tensor:
        """The prior (Q,); uniform before any update."""
        total = self.counts.sum()
        uniform = torch.full_like(self.counts, 1.0 / self.counts.numel())
        return torch.where(total > 0, self.counts / total.clamp_min(1e-12), uniform)  # no host sync
