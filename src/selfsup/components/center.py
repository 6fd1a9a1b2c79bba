"""DINO's teacher center: an EMA of the batch mean of the teacher's outputs (Caron et al. 2021, Eq. 4).

``c ← m·c + (1 − m)·mean_b(g_t(x_b))``. Subtracting ``c`` from the teacher logits before the sharpened softmax
stops one dimension from dominating (collapse to a one-hot); sharpening (a low teacher temperature) stops the
opposite collapse to the uniform distribution. The two only work together.

The method calls :meth:`observe` with the teacher outputs of the step (the current loss uses the old center, as
in the paper); the engine applies the update in :meth:`after_step`, after the optimizer step, like the EMA teacher.
Under gradient accumulation every micro-batch's forward observes its outputs and the update uses the mean over all
of them, the batch mean of the whole step.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import SharedPart, Staged, StepContext
from .gather import all_reduce_mean_


class Center(SharedPart):
    """A (1, dim) buffer ``center`` updated with momentum ``momentum`` from the observed batch means."""
    center: torch.Tensor

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"method.center_momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))
        # (row sum, row count) of every forward since the last update; not checkpointed (a checkpoint is written
        # after the update)
        self._staged = Staged()

    @torch.no_grad()
    def observe(self, teacher_out: torch.Tensor, ctx: StepContext | None = None) -> None:
        """Add ``teacher_out`` (N, dim), the logits of every global view of a (micro-)batch, to this step's mean.
        ``ctx``: what was observed for an earlier step that never reached ``after_step`` (skipped) is dropped."""
        x = teacher_out.detach().float()
        count = torch.full((1,), float(x.shape[0]), device=x.device)
        self._staged.add(x.sum(dim=0, keepdim=True), count, step=None if ctx is None else ctx.step)

    @property
    def pending(self) -> torch.Tensor | None:
        """(1, dim): the mean of the rows observed since the last update (this rank's), or None."""
        staged = self._staged.peek()
        if staged is None:
            return None
        sums, counts = staged
        return sums.sum(dim=0, keepdim=True) / counts.sum()

    @torch.no_grad()
    def update(self) -> None:
        """c ← m·c + (1 − m)·pending (no-op when nothing was observed since the last update)."""
        mean = self.pending
        self._staged.clear()
        if mean is None:
            return
        all_reduce_mean_(mean)  # under torchrun: the global batch mean (equal per-rank batches)
        self.center.mul_(self.momentum).add_(mean.to(self.center.dtype), alpha=1.0 - self.momentum)

    def after_step(self, ctx: StepContext) -> None:
        self.update()
