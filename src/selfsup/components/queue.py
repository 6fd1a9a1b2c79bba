"""A FIFO queue of feature vectors (MoCo's keys, SwAV's stored projections).

A method reads the queue in ``forward`` and :meth:`FeatureQueue.stage` s the batch's rows; the engine's
``after_step`` (after the optimizer step) pushes them, in the order staged. Step t therefore contrasts with the
rows of steps < t, as when the method pushed right after its loss, and a forward pass alone (a monitor, an
evaluation) never changes the queue. Several micro-batches of one step (gradient accumulation) all see the queue
as it was at the start of the step and enter it together, in order, as one batch of their size would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SharedPart, Staged, StepContext


class FeatureQueue(SharedPart):
    """``size`` rows of dimension ``dim``; ``push(x)`` overwrites the oldest rows, wrapping around.

    State (rows, write pointer, fill count) lives in buffers and is checkpointed with the method. ``ids`` holds
    an optional integer per row (MoCo stores the image's dataset index, to skip keys of the query's own image);
    -1 where none was given.
    """
    rows: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor
    ids: torch.Tensor

    def __init__(self, size: int, dim: int, *, normalize: bool = True) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        init = torch.randn(size, dim)
        self.register_buffer("rows", F.normalize(init, dim=1) if normalize else init)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self._staged = Staged()  # not checkpointed: empty after a step

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    @torch.no_grad()
    def push(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Enqueue ``x`` (B, dim) and optionally ``ids`` (B,); the oldest B rows leave. For B > size (the
        micro-batches of one step together) only the newest ``size`` rows stay, where B pushes of one row each
        would leave them."""
        b = x.shape[0]
        keep = min(b, self.size)
        idx = (self.ptr + b - keep + torch.arange(keep, device=x.device)) % self.size
        self.rows[idx] = x[b - keep:].detach().to(self.rows.dtype)
        self.ids[idx] = ids[b - keep:].to(self.ids) if ids is not None else -1
        self.ptr.copy_((self.ptr + b) % self.size)
        self.filled.copy_(torch.clamp(self.filled + b, max=self.size))

    def stage(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Remember rows ``x`` (B, dim) (and ``ids``) for :meth:`after_step`, which pushes them."""
        if x.shape[0] > self.size:
            raise ValueError(f"cannot push {x.shape[0]} rows into a queue of size {self.size}")
        self._staged.add(x, ids if ids is not None else torch.full((x.shape[0],), -1, dtype=torch.long,
                                                                     device=x.device))

    def after_step(self, ctx: StepContext) -> None:
        staged = self._staged.take()
        if staged is not None:
            self.push(*staged)

    def valid(self) -> torch.Tensor:
        """The rows written so far (all rows once the queue is full)."""
        n = int(self.filled)
        return self.rows if n >= self.size else self.rows[:n]
