"""Per-step learning-rate schedules: linear warm-up then cosine decay, as one array indexed by step."""
from __future__ import annotations

import math


def warmup_cosine(base: float, total_steps: int, warmup_steps: int, final: float = 0.0) -> list[float]:
    """``total_steps`` values: linear from ~0 to ``base`` over ``warmup_steps``, then cosine to ``final``."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)
    out = []
    for s in range(total_steps):
        if s < warmup_steps:
            out.append(base * (s + 1) / warmup_steps)
        else:
            t = (s - warmup_steps) / max(1, total_steps - warmup_steps)
            out.append(final + (base - final) * 0.5 * (1 + math.cos(math.pi * t)))
    return out
