"""A memory bank: one L2-normalised feature per training image (Wu et al. 2018, NPID; Misra & van der Maaten 2020, PIRL).

Row i holds a running average of image i's embedding. A method reads the rows of its batch (positives) and of
randomly drawn other images (negatives), and stages its new embeddings with :meth:`MemoryBank.stage`; the engine
then calls :meth:`after_step`, which applies ``v_i ← normalize(m·v_i + (1 − m)·f_i)`` (m = 0.5 in both papers).
The rows are a buffer, so checkpoints hold them and ``--resume`` continues with the same bank. Under gradient
accumulation every micro-batch's forward stages its rows (a :class:`~selfsup.components.base.Staged`) and the one
``after_step`` of the optimizer step writes all of them: the same update as one forward over the whole batch.

Under torchrun every rank holds the whole bank: the staged embeddings and indices are gathered from all ranks in
``after_step`` (every rank applies the same update), and negatives are drawn for the global batch from the rank-synchronised
torch RNG, each rank keeping its rows; two processes with batch B/2 thus draw and write exactly what one process
with batch B does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import SharedPart, Staged, StepContext
from .gather import gather_no_grad, rank_rows


class MemoryBank(SharedPart):
    """``size`` rows of dimension ``dim`` (size = the number of training images; dataset indices address rows)."""
    rows: torch.Tensor

    def __init__(self, size: int, dim: int, momentum: float = 0.5, *, owner: str = "method") -> None:
        super().__init__()
        if size < 2:
            raise ConfigError(f"{owner} needs a memory bank with one row per training image, but num_train is {size}; "
                              "build the method with num_train=<number of training images>")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"{owner}.bank_momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.owner = owner
        self.register_buffer("rows", F.normalize(torch.randn(size, dim), dim=1))
        self._staged = Staged()

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Rows at ``index`` (any shape, e.g. (B,) or (B, 1 + k)) → (*index.shape, dim); a copy, safe to use in
        the loss after the bank changes."""
        return self.rows[index]

    def sample_indices(self, index: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, k) uniform draws (with replacement, as NPID) from all rows except ``index[b]`` for row b.

        Drawing r from [0, size − 1) and shifting r ≥ index[b] up by one excludes exactly the positive. The
        draws are made for the global batch (every rank's indices) and this rank keeps its rows.
        """
        every = gather_no_grad(index)
        r = torch.randint(0, self.size - 1, (every.shape[0], k), device=self.rows.device, generator=generator)
        return rank_rows(r + (r >= every[:, None].to(r.device)).long(), index.shape[0])

    def positives_and_negatives(self, index: torch.Tensor, k: int, generator: torch.Generator | None = None
                                ) -> torch.Tensor:
        """(B, 1 + k, dim): column 0 is each image's own row, columns 1..k rows of k random other images.

        One gather for both, so the (B, 1 + k, dim) tensor is built once.
        """
        return self.lookup(torch.cat([index[:, None], self.sample_indices(index, k, generator)], dim=1))

    def stage(self, index: torch.Tensor, features: torch.Tensor, ctx: StepContext | None = None) -> None:
        """Add embeddings (B, dim) of images ``index`` (B,) to this step's update; :meth:`after_step` writes every
        micro-batch's rows, of every rank, after the optimizer step. ``ctx``: rows staged for an earlier step that
        never reached ``after_step`` (skipped) are dropped."""
        self._staged.add(index, features, step=None if ctx is None else ctx.step)

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        """``rows[i] ← normalize(m·rows[i] + (1 − m)·normalize(f_i))`` for the images of the batch."""
        f = F.normalize(features.to(self.rows.dtype), dim=1)
        new = self.momentum * self.rows[index] + (1.0 - self.momentum) * f
        self.rows[index] = F.normalize(new, dim=1)

    def after_step(self, ctx: StepContext) -> None:
        staged = self._staged.take()
        if staged is not None:
            index, features = staged
            self.update(gather_no_grad(index), gather_no_grad(features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        saved = state_dict.get(prefix + "rows")
        if saved is not None and saved.shape != self.rows.shape:
            raise ConfigError(
                f"{self.owner}: the checkpoint's memory bank has {saved.shape[0]} rows of size {saved.shape[1]} but "
                f"this run has {self.size} training images and size {self.rows.shape[1]}; data.path (or a method "
                "option) changed since the run started, and a memory bank cannot be resumed on other data")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
