"""DINO's teacher center: an EMA of the batch mean of the teacher's outputs (Caron et al. 2021, Eq. 4).

``c ← m·c + (1 − m)·mean_b(g_t(x_b))``. Subtracting ``c`` from the teacher logits before the sharpened softmax
stops one dimension from dominating (collapse to a one-hot); sharpening (a low teacher temperature) stops the
opposite collapse to the uniform distribution. The two only work together.

The method calls :meth:`observe` with the teacher outputs of the step (the current loss uses the old center, as
in the paper); the engine applies the update in :meth:`after_step`, after the optimizer step, like the EMA teacher.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import SharedPart, StepContext
from .gather import all_reduce_mean_


class Center(SharedPart):
    """A (1, dim) buffer ``center`` updated with momentum ``momentum`` from the observed batch means."""
    center: torch.Tensor
    pending: torch.Tensor

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"method.center_momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))
        # the batch mean waiting for after_step; not checkpointed (a checkpoint is written after the update)
        self.register_buffer("pending", torch.zeros(1, dim), persistent=False)
        self._has_pending = False

    @torch.no_grad()
    def observe(self, teacher_out: torch.Tensor) -> None:
        """Record the batch mean of ``teacher_out`` (N, dim), the logits of every global view of the batch."""
        self.pending.copy_(teacher_out.detach().float().mean(dim=0, keepdim=True))
        self._has_pending = True

    @torch.no_grad()
    def update(self) -> None:
        """c ← m·c + (1 − m)·pending (no-op when nothing was observed since the last update)."""
        if not self._has_pending:
            return
        all_reduce_mean_(self.pending)  # under torchrun: the global batch mean (equal per-rank batches)
        self.center.mul_(self.momentum).add_(self.pending, alpha=1.0 - self.momentum)
        self._has_pending = False

    def after_step(self, ctx: StepContext) -> None:
        self.update()
