"""Callbacks: what the loop calls at log steps and at the end of every epoch, so monitors stay out of the loop.

A :class:`Callback` overrides what it needs (every hook is a no-op here):

- ``on_log(step, rec, out)`` at every log step, on every rank, before ``rec`` is written: it may add values to
  ``rec`` (the record of ``metrics.jsonl``); ``out`` is the step's :class:`~selfsup.methods.base.MethodOutput`.
- ``on_epoch_end(run, step)`` after each epoch (and when the loop stops mid-epoch), on every rank; it returns a
  record to log or None. ``run`` is a :class:`RunView` of the model, data and device.
- ``stop_requested`` / ``stop_kind`` / ``stop_message``: a callback with ``can_stop`` ends the run when rank 0's
  ``stop_requested`` is true at a log step (``TrainResult.stopped`` is then ``stop_kind``).
- ``summary()``: extra fields for ``run.json``.
- ``options``: the config options the callback implements (the trainer warns about a set option none implements).

:class:`CollapseCallback` (engine/monitors.py's monitors) is always attached by the trainer; the online kNN
monitor lives in :mod:`selfsup.evaluation.online` and is attached by :func:`selfsup.api.pretrain`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..data import ImageDataset
from ..methods.base import Method, MethodOutput
from .monitors import CollapseMonitor, CollapseWarning


@dataclass
class RunView:
    """What a callback may look at: the method (in train mode; restore it if you switch), the data, the device."""

    method: Method
    data: ImageDataset
    device: torch.device
    steps_per_epoch: int
    is_main: bool
    quiet: bool


class Callback:
    """Base class with no-op hooks (see the module docstring)."""

    can_stop = False
    stop_kind = "stopped"
    options: tuple[str, ...] = ()

    @property
    def stop_requested(self) -> bool:
        return False

    def stop_message(self) -> str:
        return ""

    def on_log(self, step: int, rec: dict[str, Any], out: MethodOutput) -> None:
        pass

    def on_epoch_end(self, run: RunView, step: int) -> dict[str, Any] | None:
        return None

    def summary(self) -> dict[str, Any]:
        return {}


class CollapseCallback(Callback):
    """Collapse monitors at log steps: values into the record, one warning per new alert, and with
    ``stop`` (``train.stop_on_collapse``) the end of the run."""

    stop_kind = "collapsed"
    options = ("train.stop_on_collapse",)

    def __init__(self, stop: bool = False) -> None:
        self.monitor = CollapseMonitor()
        self.can_stop = stop
        self.collapse: str | None = None  # the first alert

    @property
    def stop_requested(self) -> bool:
        return bool(self.monitor.active)

    def stop_message(self) -> str:
        return f"(--stop-on-collapse): {self.collapse}"

    def on_log(self, step: int, rec: dict[str, Any], out: MethodOutput) -> None:
        rec.update(self.monitor.measure(out.embedding, getattr(out, "probs", None)))
        for alert in self.monitor.check(rec):
            warnings.warn(f"step {step}: possible collapse: {alert}", CollapseWarning, stacklevel=2)
            self.collapse = self.collapse or alert

    def summary(self) -> dict[str, Any]:
        return {"collapse": self.collapse} if self.collapse else {}
