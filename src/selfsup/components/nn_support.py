"""NNCLR's support set (Dwibedi et al. 2021): a FIFO queue of L2-normalised projections and the nearest-neighbour
lookup that replaces an embedding by its closest queued one.

NNCLR uses the nearest neighbour ``NN(z, Q) = argmax_{q ∈ Q} cos(z, q)`` of a view's projection as the positive;
solo-learn's NN-BYOL and NN-SimSiam swap BYOL's and SimSiam's targets for theirs the same way. The lookup is a
constant of the loss (no gradient flows into the support set, as in the paper's pseudo-code and every released
implementation). The queue is a :class:`~selfsup.components.queue.FeatureQueue`: the forward :meth:`stage` s the
batch's projections, the engine pushes them after the optimizer step, so step t looks up neighbours among the
projections of steps < t.

Rows not yet written are never returned (the authors' code starts from random unit vectors, which would make the
first K/B steps' "neighbours" noise): while the queue is still empty, i.e. at the very first step, an embedding is
its own neighbour. Under torchrun every rank stages the projections of every rank (:func:`gather_no_grad`), so the
support set is the same on all ranks and a rank's lookups equal those of one process with the global batch.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .gather import gather_no_grad, global_rows
from .queue import FeatureQueue


class NearestNeighbourSupport(FeatureQueue):
    """``size`` L2-normalised rows of dimension ``dim``; :meth:`nearest` looks up, :meth:`stage` enqueues."""

    def __init__(self, size: int, dim: int, *, option: str = "method.queue_size") -> None:
        super().__init__(size, dim)
        self.option = option

    def check_batch_size(self, batch_size: int) -> None:
        """Every step pushes the global batch's projections, which must fit: a ConfigError naming the option."""
        rows = global_rows(batch_size)
        if rows > self.size:
            raise ConfigError(f"{self.option} ({self.size}) must be at least the global batch size ({rows}): "
                              "every step adds the batch's projections to the support set")

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) → (B, D): the written row of highest cosine similarity to each ``z`` row (float32, detached);
        ``normalize(z)`` itself while nothing has been written yet. Computed in float32 whatever the autocast."""
        zn = F.normalize(z.detach().float(), dim=1)
        device_type = zn.device.type
        with torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) else nullcontext():
            sim = zn @ self.rows.float().T
        unwritten = torch.arange(self.size, device=zn.device) >= self.filled
        best = sim.masked_fill(unwritten[None, :], float("-inf")).argmax(dim=1)
        return torch.where(self.filled > 0, self.rows[best].float(), zn)

    def swap(self, views: Sequence[torch.Tensor], ids: torch.Tensor | None = None
             ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """NNCLR's swap for the per-view projections ``views`` (each (B, D)): their nearest neighbours (detached,
        float32), and the mean cosine of view 1's projections with theirs (a diagnostic, detached). View 1's
        projections are staged for the support set (pushed after the step), with the images' ``ids``."""
        neighbours = [self.nearest(z) for z in views]
        own = F.normalize(views[0].detach().float(), dim=1)
        self.stage(views[0], ids)
        return neighbours, (own * neighbours[0]).sum(dim=1).mean()

    def stage(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Enqueue (after the step) the L2-normalised ``x`` (B, D) of every rank, in rank order."""
        rows = gather_no_grad(F.normalize(x.detach().float(), dim=1))
        super().stage(rows, gather_no_grad(ids) if ids is not None else None)

