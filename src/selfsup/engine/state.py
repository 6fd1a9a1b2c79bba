"""What a run carries from step to step besides the model and the optimizer, and what a checkpoint restores.

:class:`TrainState` holds the step, the schedule's length, the open loss window (summed on the device; the
log averages it), the count of skipped updates, the first non-finite step (kept on the device, read only at
log and checkpoint steps) and the random streams: torch's global (CPU and CUDA) generators and the
augmentation generator of this rank (all ranks' under ``torchrun``). Its :meth:`~TrainState.state_dict` is the
``step``/``total_steps``/``log``/``rng`` part of a checkpoint, so a resumed run continues exactly.
"""
from __future__ import annotations

from typing import Any

import torch

from . import distributed as D


class TrainState:
    """Step, loss window, non-finite bookkeeping and RNG streams of one rank."""

    def __init__(self, device: torch.device, aug_gen: torch.Generator, total_steps: int) -> None:
        self.step = 0
        self.total_steps = total_steps
        self.aug_gen = aug_gen
        self.loss_sum = torch.zeros((), device=device)
        self.loss_count = 0
        self.skipped = 0
        self.wall_before = 0.0  # wall-clock seconds of earlier launches (restored from the checkpoint)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # -1: every step finite so far
        self.first_kind = torch.zeros((), dtype=torch.long, device=device)  # nonfinite.KIND code of first_bad

    # -- the loss window -------------------------------------------------------------------------------------
    def add_loss(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.loss_count += 1

    def window_loss(self, dctx: D.DistContext) -> float:
        """The mean loss of the open window over every rank (one host sync); NaN for an empty window."""
        if not self.loss_count:
            return float("nan")
        return float(D.mean_over_ranks(self.loss_sum, dctx)) / self.loss_count

    def reset_window(self) -> None:
        self.loss_sum.zero_()
        self.loss_count = 0

    # -- non-finite bookkeeping ------------------------------------------------------------------------------
    def note_code(self, code: torch.Tensor) -> None:
        """Remember the first step whose ``code`` (nonfinite.bad_code) is not 0: no host sync, no copy."""
        new_bad = (self.first_bad < 0) & (code > 0)
        self.first_kind = torch.where(new_bad, code, self.first_kind)
        self.first_bad.masked_fill_(new_bad, self.step)

    def first_bad_step(self, dctx: D.DistContext) -> int:
        """The first non-finite step on any rank (-1: none); one host sync."""
        return D.reduce_first_bad(self.first_bad, dctx)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def rng_state(self, dctx: D.DistContext) -> dict[str, Any]:
        """The random streams (collective under torchrun: every rank calls it; rank 0 gets all aug states)."""
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "aug": self.aug_gen.get_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        aug_states = D.gather_generator_states(self.aug_gen, dctx)
        if dctx.enabled:
            state["aug_ranks"] = aug_states
        return state

    def state_dict(self, dctx: D.DistContext) -> dict[str, Any]:
        """The checkpoint's ``step``, ``total_steps``, ``log`` and ``rng`` entries (collective, see rng_state)."""
        return {"step": self.step, "total_steps": self.total_steps, "rng": self.rng_state(dctx),
                # the open log window, so a resumed run logs the same averaged losses as an uninterrupted one
                "log": {"loss_sum": float(self.loss_sum), "loss_count": self.loss_count, "skipped": self.skipped,
                        "first_bad": int(self.first_bad), "first_kind": int(self.first_kind)}}

    def load_state_dict(self, ckpt: dict[str, Any], dctx: D.DistContext, seed: int) -> str | None:
        """Restore from a checkpoint; returns a note when the augmentation streams had to be re-seeded."""
        log = ckpt.get("log", {})
        self.step, self.total_steps = int(ckpt["step"]), int(ckpt["total_steps"])
        self.loss_sum.fill_(float(log.get("loss_sum", 0.0)))
        self.loss_count, self.skipped = int(log.get("loss_count", 0)), int(log.get("skipped", 0))
        self.first_bad.fill_(int(log.get("first_bad", -1)))
        self.first_kind.fill_(int(log.get("first_kind", 0)))
        self.wall_before = float(log.get("wall_s_total", 0.0))
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        self.aug_gen.set_state(rng["aug"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if dctx.enabled or "aug_ranks" in rng:
            return D.restore_generator(self.aug_gen, rng.get("aug_ranks"), dctx, seed, self.step)
        return None
