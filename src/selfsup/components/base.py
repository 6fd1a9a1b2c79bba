"""Shared stateful parts that methods declare and the engine updates after every optimizer step.

A part keeps its state in buffers (so it is saved in checkpoints with the method's ``state_dict``) and exposes
``after_step(ctx)``. The engine calls it for every :class:`SharedPart` found in the method's modules; the
method never calls it itself, so the same method runs unchanged in a user's own loop that calls
:func:`update_parts`.

What a forward hands a part for its next ``after_step`` (a memory bank's new embeddings, DINO's teacher means)
goes into a :class:`Staged`: under gradient accumulation the engine runs the forward once per micro-batch and
``after_step`` once per optimizer step, so a part that kept only the last call would lose all but the last
micro-batch. :class:`Staged` keeps every call of the step and hands them over concatenated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
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


class Staged:
    """Tensors staged by the forward calls of one optimizer step, for the part's ``after_step``.

    :meth:`add` appends one call's tensors (detached); :meth:`take` returns them concatenated along dim 0, one
    tensor per position, and empties the stage. ``step`` (the caller's ``StepContext.step``, or None) guards
    against a step that never reached ``after_step`` (skipped by ``train.nan_policy=skip``, its values possibly
    non-finite): what was staged for another step is dropped, not applied with this one. Not checkpointed: the
    engine writes checkpoints after ``after_step``, when the stage is empty.
    """

    def __init__(self) -> None:
        self._calls: list[tuple[torch.Tensor, ...]] = []
        self._step: int | None = None

    def add(self, *tensors: torch.Tensor, step: int | None = None) -> None:
        if self._calls and step != self._step:
            self._calls.clear()
        self._step = step
        self._calls.append(tuple(t.detach() for t in tensors))

    def __len__(self) -> int:
        """The number of calls staged."""
        return len(self._calls)

    def peek(self) -> tuple[torch.Tensor, ...] | None:
        """The staged tensors concatenated, or None when nothing is staged; the stage is kept."""
        if not self._calls:
            return None
        return tuple(torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*self._calls))

    def take(self) -> tuple[torch.Tensor, ...] | None:
        """:meth:`peek`, then empty the stage."""
        out = self.peek()
        self.clear()
        return out

    def clear(self) -> None:
        self._calls.clear()
        self._step = None


class SharedPart(nn.Module):
    """Base class for EMA teachers, queues, memory banks, centers: state + an engine-driven update."""

    def after_step(self, ctx: StepContext) -> None:  # pragma: no cover - default does nothing
        pass

    def discard_staged(self) -> None:
        """Forget what the forward staged for this step (the step was skipped); default: clear every
        :class:`Staged` attribute."""
        for value in vars(self).values():
            if isinstance(value, Staged):
                value.clear()


def update_parts(module: nn.Module, ctx: StepContext) -> None:
    """Call ``after_step`` on every shared part inside ``module`` (what the engine does after each step)."""
    for m in module.modules():
        if isinstance(m, SharedPart):
            m.after_step(ctx)


def discard_staged(module: nn.Module) -> None:
    """Call ``discard_staged`` on every shared part inside ``module``: what a loop does instead of
    :func:`update_parts` when it skips an optimizer step, so the skipped step's values never reach the state."""
    for m in module.modules():
        if isinstance(m, SharedPart):
            m.discard_staged()
