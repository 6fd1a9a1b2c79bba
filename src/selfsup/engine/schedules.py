"""Per-step learning-rate schedules: linear warm-up then cosine decay, computed per step (never a list of all steps).

A run's schedule is :class:`WarmupCosine`, indexed like a list (``sched[step]``) but holding only its four
parameters, so ``--epochs 10**7`` costs nothing before the first step. :func:`warmup_cosine` lists the same
values (for tests and plots of short schedules).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def lr_at(step: int, base: float, total_steps: int, warmup_steps: int, final: float = 0.0) -> float:
    """The learning rate of ``step`` (0-based): linear from ``base / warmup_steps`` to ``base`` over
    ``warmup_steps``, then cosine from ``base`` to ``final`` over the rest of ``total_steps``."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass(frozen=True)
class WarmupCosine:
    """``sched[step]`` → :func:`lr_at`; ``len(sched)`` is the number of steps. O(1) memory for any length."""

    base: float
    total_steps: int
    warmup_steps: int
    final: float = 0.0

    def __len__(self) -> int:
        return max(1, self.total_steps)

    def __getitem__(self, step: int) -> float:
        n = len(self)
        if step < 0:
            step += n
        if not 0 <= step < n:
            raise IndexError(f"step {step} outside a schedule of {n} steps")
        return lr_at(step, self.base, self.total_steps, self.warmup_steps, self.final)


def warmup_cosine(base: float, total_steps: int, warmup_steps: int, final: float = 0.0) -> list[float]:
    """``total_steps`` values: linear from ~0 to ``base`` over ``warmup_steps``, then cosine to ``final``."""
    sched = WarmupCosine(base, total_steps, warmup_steps, final)
    return [sched[s] for s in range(len(sched))]
