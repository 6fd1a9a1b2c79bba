"""The wall-clock budget (``train.time_limit_min``): the run's clock, and the schedule sized from measured speed.

With a budget the run measures its speed twice and each time sets ``total_steps`` to what fits in the time
left (never more than the configured epochs), so the warm-up and the cosine schedule end inside the budget:

- early, after step 3 of this launch (steps 2-3 measured: the first step pays for compilation and the first
  allocations), so even a budget of a handful of steps gets a schedule it can finish;
- again after step 25 (steps 6-25 measured), which corrects the early estimate;
- then at a quarter and at half of the run so sized (:data:`LATER`), each time from the steps since the previous
  sizing. Steps 6-25 still run slower than the rest (compiled kernels and allocator caches warming up, CPU
  clocks): a 10-minute SimCLR run at 24 px measured ~700 images/s over them and ~850 after, so a run sized only
  there ended its schedule after 483 s of its 600. A later resize moves the learning rate only a little: making
  the cosine a fifth longer at a quarter of the run raises the lr there by about 5 %.

The warm-up never takes more than a fifth of the sized run (engine/schedules.py: ``run_schedule``). A budget
that fits fewer than :data:`USEFUL_STEPS` steps is warned about (:func:`estimate_message`). The run also stops
when the time is up. Under ``torchrun`` rank 0's clock decides for every rank.
"""
from __future__ import annotations

import time

from . import distributed as D

# (first step measured, step of this launch after which the run is sized), in this launch's steps
CALIBRATIONS = ((1, 3), (5, 25))
LATER = (0.25, 0.5)  # fractions of the run sized after step 25 where it is sized again (steps since the last sizing)
_MARKED = frozenset(s for pair in CALIBRATIONS for s in pair)
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
        self.later: list[int] = []  # launch steps of the later sizings (set by the step-25 one)
        self.last = 0  # the launch step of the latest sizing

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
        if done in _MARKED or done in self.later:  # only the steps a sizing reads
            self.marks[done] = time.perf_counter()
        if self.cap is None:
            self.cap = total_steps
        first = next((f for f, at in CALIBRATIONS if at == done), None)
        if first is None and done in self.later:
            first = self.last
        if first is None or first not in self.marks:
            return None
        self.rate = (done - first) / max(self.marks[done] - self.marks[first], 1e-9)
        left = self.limit_s - self.elapsed()
        total = D.broadcast_value(self.dctx, min(self.cap, step + max(1, int(left * self.rate))))
        if done == CALIBRATIONS[-1][1]:  # every rank has the same total: the same later steps
            run = total - self.start_step
            self.later = [d for d in sorted({int(f * run) for f in LATER}) if d > done + 10]
        self.last = done
        return total


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
