"""The wall-clock budget (``train.time_limit_min``): the run's clock, and the schedule sized from measured speed.

With a budget the run measures its speed between step 5 (after compilation and the first-step allocations) and
step 25 of this launch, then shortens ``total_steps`` to what fits in the time left, so the cosine schedule
still ends at the end of the budget; the warm-up is unchanged. The run also stops when the time is up. Under
``torchrun`` rank 0's clock decides for every rank.
"""
from __future__ import annotations

import time

from . import distributed as D

WARMUP_STEPS = 5  # steps of this launch not measured
MEASURE_UNTIL = 25  # steps of this launch after which the speed is measured


class Budget:
    """The run's clock (``elapsed``) and, with a time limit, ``time_up`` and the one-time ``resize``."""

    def __init__(self, limit_min: float | None, start_step: int, dctx: D.DistContext) -> None:
        self.limit_s = None if limit_min is None else limit_min * 60
        self.start_step = start_step
        self.dctx = dctx
        self.t_start = time.perf_counter()
        self.t_measure = self.t_start
        self.calibrated = limit_min is None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def time_up(self) -> bool:
        """Whether the budget is spent (the same answer on every rank)."""
        if self.limit_s is None:
            return False
        up = self.elapsed() > self.limit_s
        return D.broadcast_value(self.dctx, up) if self.dctx.enabled else up

    def resize(self, step: int, total_steps: int) -> int | None:
        """After step ``step``: the new ``total_steps`` once the speed is measured (None before and after)."""
        done = step - self.start_step
        if done == WARMUP_STEPS:
            self.t_measure = time.perf_counter()
        if self.calibrated or done < MEASURE_UNTIL:
            return None
        assert self.limit_s is not None
        self.calibrated = True
        rate = (done - WARMUP_STEPS) / (time.perf_counter() - self.t_measure)
        left = self.limit_s - self.elapsed()
        return D.broadcast_value(self.dctx, min(total_steps, step + max(1, int(left * rate))))
