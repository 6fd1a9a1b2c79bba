"""Pre-emption and requeue: SIGTERM, SIGINT and the requeue signal become a request to stop at the next step
boundary.

Clusters pre-empt jobs with SIGTERM (then SIGKILL after a grace period); users press Ctrl-C. Raising from the
signal handler could interrupt ``optimizer.step()`` half-way and checkpoint weights that belong to no step, so
the handler only records the signal; the training loop checks :attr:`StopOnSignal.received` after each step,
writes a checkpoint at that step and returns. A second Ctrl-C raises ``KeyboardInterrupt`` at once (the last
checkpoint is kept). Handlers are installed only while training and the previous ones are restored after.

The requeue signal (``train.requeue_signal``: SIGUSR1 by default, SIGUSR2, or ``none``) is the warning a
scheduler sends a job shortly before its time limit (SLURM: ``#SBATCH --signal=B:USR1@120``, forwarded by the
batch script; docs/distributed.md, "Clusters: preemption and restarts"). The loop stops the same way, the run
records ``"stopped": "requeue"``, and ``selfsup pretrain`` exits with :data:`REQUEUE_EXIT_CODE`, which the
batch script answers with ``scontrol requeue``; the requeued job's ``--resume`` continues from that checkpoint.
Once the requeue signal has arrived, a later SIGTERM (the scheduler's own stop at the time limit) keeps the stop
a requeue.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from .distributed import DistContext, broadcast_value

# The exit code of `selfsup pretrain` after the requeue signal: not 0 (done, or stopped by SIGTERM / Ctrl-C), 1 (a
# crash), 2 (a usage error) nor 128+N (killed by signal N), so a batch script can tell "checkpointed, requeue me".
REQUEUE_EXIT_CODE = 3
NO_REQUEUE = "none"  # train.requeue_signal value: no requeue signal is handled


def requeue_signum(name: str | None) -> signal.Signals | None:
    """The signal ``train.requeue_signal`` names; None for ``none`` (or a signal this platform lacks)."""
    if not name or name == NO_REQUEUE:
        return None
    return getattr(signal, name, None)


class StopOnSignal:
    """``with StopOnSignal() as stop: ... if stop.received: save and break`` (or ``install()`` / ``restore()``).

    ``requeue``: the name of the requeue signal (``train.requeue_signal``); None or ``"none"``: not handled.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, requeue: str | None = None) -> None:
        self.received: str | None = None  # "SIGTERM" / "SIGINT" / the requeue signal's name once a signal arrived
        self.requeue_signal = requeue_signum(requeue)
        self._previous: dict[int, Any] = {}

    @property
    def requeue(self) -> bool:
        """Whether the requeue signal arrived (then the stop is a requeue, whatever came after)."""
        return self.requeue_signal is not None and self.received == self.requeue_signal.name

    def signals(self) -> tuple[signal.Signals, ...]:
        """The signals handled while installed."""
        extra: tuple[signal.Signals, ...] = (self.requeue_signal,) if self.requeue_signal is not None else ()
        return (*self.SIGNALS, *extra)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        if not self.requeue:  # a requeue stays a requeue
            self.received = signal.Signals(signum).name

    def install(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for s in self.signals():
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


def signal_stop(stop: StopOnSignal, dctx: DistContext, end_of_run: bool) -> str | None:
    """``"interrupted"`` (SIGTERM, SIGINT) or ``"requeue"`` (the requeue signal) when a signal asks to stop after
    this step, else None. Under torchrun rank 0's signal decides for every rank (one broadcast per step, the path
    of the other stop decisions), so all ranks save this step and stop the same way. A requeue asked for during
    the run's last step is no requeue: the run ends as it would have."""
    received, requeue = broadcast_value(dctx, (stop.received, stop.requeue))
    if received is None:
        return None
    if requeue:
        return None if end_of_run else "requeue"
    return "interrupted"
