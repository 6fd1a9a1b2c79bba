"""Shared stateful parts that methods declare and the engine updates after every optimizer step.

A part keeps its state in buffers (so it is saved in checkpoints with the method's ``state_dict``) and exposes
``after_step(ctx)``. The engine calls it for every :class:`SharedPart` found in the method's modules; the
method never calls it itself, so the same method runs unchanged in a user's own loop that calls
:func:`update_parts`.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class StepContext:
    """Where training is: the engine passes this to methods and parts; schedules read ``progress``."""

    step: int = 0
    total_steps: int = 1
    epoch: int = 0
    steps_per_epoch: int = 1

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


class SharedPart(nn.Module):
    """Base class for EMA teachers, queues, memory banks, centers: state + an engine-driven update."""

    def after_step(self, ctx: StepContext) -> None:  # pragma: no cover - default does nothing
        pass


def update_parts(module: nn.Module, ctx: StepContext) -> None:
    """Call ``after_step`` on every shared part inside ``module`` (what the engine does after each step)."""
    for m in module.modules():
        if isinstance(m, SharedPart):
            m.after_step(ctx)
