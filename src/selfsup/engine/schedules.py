"""Per-step learning-rate schedules: linear warm-up then cosine decay, computed per step (never a list of all steps).

A run's schedule is :class:`WarmupCosine`, called with the step (``sched(step)``) and holding only its four
parameters, so ``--epochs 10**7`` costs nothing before the first step. :func:`warmup_cosine` lists the same
values (for tests and plots of short schedules).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def lr_at(step: int, base: float, total_steps: int, warmup_steps: int, final: float = 0.0) -> float:
    """The learning rate of ``step`` (0-based): linear from ``base / warmup_steps`` to ``base`` over
    ``warmup_steps``, then cosine from ``base`` to ``final`` over the rest of ``total_steps``. Steps outside the
    run take the nearest end's value."""
    total = max(1, total_steps)
    warmup = min(max(0, warmup_steps), total)
    s = min(max(0, step), total - 1)
    if s < warmup:
        return base * (s + 1) / warmup
    t = (s - warmup) / max(1, total - warmup)
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass(frozen=True)
class WarmupCosine:
    """``sched(step)`` → :func:`lr_at` for a run of ``total_steps`` steps; O(1) memory for any length."""

    base: float
    total_steps: int
    warmup_steps: int
    final: float = 0.0

    def __call__(self, step: int) -> float:
        return lr_at(step, self.base, self.total_steps, self.warmup_steps, self.final)


def run_schedule(lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> WarmupCosine:
    """A pretraining run's schedule: the warm-up never takes more than a fifth of the run (short budgets still
    get their cosine decay)."""
    return WarmupCosine(lr, total_steps, min(warmup_steps, total_steps // 5), lr * min_lr_ratio)


def warmup_cosine(base: float, total_steps: int, warmup_steps: int, final: float = 0.0) -> list[float]:
    """The ``total_steps`` values of :class:`WarmupCosine` as a list."""
    f = WarmupCosine(base, total_steps, warmup_steps, final)
    return [f(s) for s in range(max(1, total_steps))]
