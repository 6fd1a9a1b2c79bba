"""A FIFO queue of feature vectors (MoCo's keys, SwAV's stored projections)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import SharedPart


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

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    @torch.no_grad()
    def push(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Enqueue ``x`` (B, dim), B <= size, and optionally ``ids`` (B,); the oldest B rows leave."""
        b = x.shape[0]
        if b > self.size:
            raise ValueError(f"cannot push {b} rows into a queue of size {self.size}")
        idx = (self.ptr + torch.arange(b, device=x.device)) % self.size
        self.rows[idx] = x.detach().to(self.rows.dtype)
        self.ids[idx] = ids.to(self.ids) if ids is not None else -1
        self.ptr.copy_((self.ptr + b) % self.size)
        self.filled.copy_(torch.clamp(self.filled + b, max=self.size))

    def valid(self) -> torch.Tensor:
        """The rows written so far (all rows once the queue is full)."""
        n = int(self.filled)
        return self.rows if n >= self.size else self.rows[:n]
