"""What a long command shows while it works: one line per phase, and a progress bar with elapsed time and ETA.

:func:`phase` prints ``selfsup: <what is happening>`` on stdout (stderr stays one line for a user error).
:func:`bar` is a tqdm bar on stderr when stderr is a terminal and tqdm is installed; otherwise (a log file, a
pipe, no tqdm) a plain line on stdout every ``PLAIN_EVERY_S`` seconds and a last one at the end, with the
same count, elapsed time and ETA (work shorter than ``PLAIN_EVERY_S`` prints nothing). ``quiet=True`` (or ``SELFSUP_QUIET=1``) silences both; under ``torchrun`` only
rank 0 speaks.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

PLAIN_EVERY_S = 15.0


def silent(quiet: bool = False) -> bool:
    """Whether nothing should be printed (``quiet``, ``SELFSUP_QUIET=1``, or a rank other than 0)."""
    return quiet or os.environ.get("SELFSUP_QUIET", "") not in ("", "0") or os.environ.get("RANK", "0") != "0"


def phase(message: str, quiet: bool = False) -> None:
    """One line naming the phase that starts (loading data, building the model, training, evaluating ...)."""
    if not silent(quiet):
        print(f"selfsup: {message}", file=sys.stdout, flush=True)


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a duration in seconds."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class PlainBar:
    """The fallback bar: ``desc n/total (p%) elapsed m:ss ETA m:ss postfix`` lines, rate-limited."""

    def __init__(self, total: int | None, desc: str, unit: str, quiet: bool) -> None:
        self.total, self.desc, self.unit, self.quiet = total, desc, unit, quiet
        self.n = 0
        self.postfix = ""
        self.t0 = time.perf_counter()
        self._last = self.t0
        self._printed_at = -1

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        if self.total:
            eta = el / self.n * (self.total - self.n) if self.n else float("nan")
            eta_s = clock(eta) if eta == eta else "?"
            head = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:3.0f}%)"
            tail = f"elapsed {clock(el)} ETA {eta_s}"
        else:
            head, tail = f"{self.desc}: {self.n} {self.unit}", f"elapsed {clock(el)}"
        return f"{head}  {tail}" + (f"  {self.postfix}" if self.postfix else "")

    def _emit(self) -> None:
        if not self.quiet and self._printed_at != self.n:
            print(self.line(), file=sys.stdout, flush=True)
            self._printed_at = self.n
        self._last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.perf_counter() - self._last >= PLAIN_EVERY_S:
            self._emit()

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if self._printed_at >= 0:  # short work stays silent; long work ends with its final count
            self._emit()


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a bare install still works, with plain lines
        return None
    return tqdm


def bar(total: int | None, desc: str, *, unit: str = "it", quiet: bool = False, tty: bool | None = None) -> Any:
    """A progress bar (tqdm on a terminal, :class:`PlainBar` otherwise) with ``update``, ``set_postfix_str``,
    ``close`` and a settable ``total``."""
    tty = sys.stderr.isatty() if tty is None else tty
    tq = _tqdm() if tty else None
    if tq is not None:
        return tq(total=total, desc=desc, unit=unit, disable=silent(quiet), file=sys.stderr, dynamic_ncols=True,
                  leave=True)
    return PlainBar(total, desc, unit, silent(quiet))


def track(iterable, total: int | None, desc: str, *, unit: str = "batch", quiet: bool = False):
    """Iterate ``iterable`` under a :func:`bar` (closed at the end, or when the loop is left early)."""
    b = bar(total, desc, unit=unit, quiet=quiet)
    try:
        for item in iterable:
            yield item
            b.update(1)
    finally:
        b.close()
