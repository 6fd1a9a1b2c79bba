"""The wall-clock budget (``train.time_limit_min``): the run's clock, and the schedule sized from measured speed.

With a budget the run measures its speed twice and each time sets ``total_steps`` to what fits in the time
left (never more than the configured epochs), so the warm-up and the cosine schedule end inside the budget:

- early, after step 3 of this launch (steps 2-3 measured: the first step pays for compilation and the first
  allocations), so even a budget of a handful of steps gets a schedule it can finish;
- again after step 25 (steps 6-25 measured), which corrects the early estimate.

The warm-up never takes more than a fifth of the sized run (engine/schedules.py: ``run_schedule``). A budget
that fits fewer than :data:`USEFUL_STEPS` steps is warned about (:func:`estimate_message`). The run also stops
when the time is up. Under ``torchrun`` rank 0's clock decides for every rank.
"""
from __future__ import annotations

import time

from . import distributed as D

# (first step measured, step of this launch after which the run is sized), in this launch's steps
CALIBRATIONS = ((1, 3), (5, 25))
USEFUL_STEPS = 50  # fewer fitting steps than this: warm-up plus too few steps to learn anything


class Budget:
    """The run's clock (``elapsed``) and, with a time limit, ``time_up`` and the sizing ``resize``."""

    def __init__(self, limit_min: float | None, start_step: int, dctx: D.DistContext) -> None:
        self.limit_s = None if limit_min is None else limit_min * 60
        self.start_step = start_step
        self.dctx = dctx
        self.t_start = time.perf_counter()
        self.marks: dict[int, float] = {}  # launch step → time after it
        self.cap: int | None = None  # the configured length: sizing never lengthens the run beyond it
        self.rate = float("nan")  # measured steps per second

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def time_up(self) -> bool:
        """Whether the budget is spent (the same answer on every rank)."""
        if self.limit_s is None:
            return False
        up = self.elapsed() > self.limit_s
        return D.broadcast_value(self.dctx, up) if self.dctx.enabled else up

    def resize(self, step: int, total_steps: int) -> int | None:
        """After step ``step``: the new ``total_steps`` at each calibration point (None at other steps)."""
        if self.limit_s is None:
            return None
        done = step - self.start_step
        self.marks[done] = time.perf_counter()
        if self.cap is None:
            self.cap = total_steps
        for first, at in CALIBRATIONS:
            if done == at and first in self.marks:
                self.rate = (at - first) / max(self.marks[at] - self.marks[first], 1e-9)
                left = self.limit_s - self.elapsed()
                return D.broadcast_value(self.dctx, min(self.cap, step + max(1, int(left * self.rate))))
        return None


def estimate_message(limit_min: float, total_steps: int, steps_per_epoch: int, images_per_s: float,
                     warmup_steps: int, capped: bool = False) -> tuple[str, str | None]:
    """The line printed once the run is sized (``~N steps, ~M epochs fit the budget``) and, when the budget is
    too short for warm-up and :data:`USEFUL_STEPS` steps, the warning to give. ``capped``: the configured
    epochs end before the budget does (the run keeps its length; nothing to warn about)."""
    epochs = total_steps / max(1, steps_per_epoch)
    fit = "the configured run fits the budget: " if capped else ""
    line = (f"time limit {limit_min:g} min at {images_per_s:.0f} images/s: {fit}~{total_steps} steps, ~{epochs:.2g} "
            f"epochs fit the budget (warm-up {warmup_steps} steps, then cosine to the end)")
    if capped or total_steps >= USEFUL_STEPS:
        return line, None
    return line, (f"the {limit_min:g}-minute budget fits only ~{total_steps} steps at {images_per_s:.0f} images/s: "
                  f"too short for warm-up and a useful run (>= {USEFUL_STEPS} steps); raise --time-limit-min or "
                  "train a smaller configuration (--config cpu-folder, --image-size 32, --width 0.25)")
