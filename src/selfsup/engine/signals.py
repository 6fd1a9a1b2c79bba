"""Pre-emption: SIGTERM and SIGINT become a request to stop at the next step boundary.

Clusters pre-empt jobs with SIGTERM (then SIGKILL after a grace period); users press Ctrl-C. Raising from the
signal handler could interrupt ``optimizer.step()`` half-way and checkpoint weights that belong to no step, so
the handler only records the signal; the training loop checks :attr:`StopOnSignal.received` after each step,
writes a checkpoint at that step and returns. A second Ctrl-C raises ``KeyboardInterrupt`` at once (the last
checkpoint is kept). Handlers are installed only while training and the previous ones are restored after.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopOnSignal:
    """``with StopOnSignal() as stop: ... if stop.received: save and break`` (or ``install()`` / ``restore()``)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None  # "SIGTERM" / "SIGINT" once a signal arrived
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.received = signal.Signals(signum).name

    def install(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for s in self.SIGNALS:
                self._previous[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> "StopOnSignal":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()
