"""Per-step learning-rate schedules: linear warm-up then cosine decay, as a function of the step."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """``lr_at(step)`` for ``total_steps`` steps: linear from ~0 to ``base`` over ``warmup_steps``, then cosine
    to ``final``. Steps past the end keep the last value."""

    base: float
    total_steps: int
    warmup_steps: int
    final: float = 0.0

    def __call__(self, step: int) -> float:
        return self.lr_at(step)

    def lr_at(self, step: int) -> float:
        total = max(1, self.total_steps)
        warmup = min(max(0, self.warmup_steps), total)
        s = min(max(0, step), total - 1)
        if s < warmup:
            return self.base * (s + 1) / warmup
        t = (s - warmup) / max(1, total - warmup)
        return self.final + (self.base - self.final) * 0.5 * (1 + math.cos(math.pi * t))


def run_schedule(lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> WarmupCosine:
    """A pretraining run's schedule: the warm-up never takes more than a fifth of the run (short budgets still
    get their cosine decay)."""
    return WarmupCosine(lr, total_steps, min(warmup_steps, total_steps // 5), lr * min_lr_ratio)


def warmup_cosine(base: float, total_steps: int, warmup_steps: int, final: float = 0.0) -> list[float]:
    """The ``total_steps`` values of :class:`WarmupCosine` as a list."""
    f = WarmupCosine(base, total_steps, warmup_steps, final)
    return [f.lr_at(s) for s in range(max(1, total_steps))]
