"""Scalar schedules for method hyper-parameters (momentum, temperature): values given the training progress."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Cosine:
    """From ``start`` at progress 0 to ``end`` at progress 1 along a half cosine (BYOL's τ schedule)."""

    start: float
    end: float

    def __call__(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        return self.end - (self.end - self.start) * (math.cos(math.pi * p) + 1) / 2


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, progress: float) -> float:
        return self.value


@dataclass(frozen=True)
class LinearWarmup:
    """Linear from ``start`` to ``end`` over the first ``warmup`` fraction of training, then ``end`` (DINO τ_t)."""

    start: float
    end: float
    warmup: float

    def __call__(self, progress: float) -> float:
        if self.warmup <= 0 or progress >= self.warmup:
            return self.end
        return self.start + (self.end - self.start) * progress / self.warmup
