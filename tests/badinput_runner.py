"""Run ``selfsup`` in-process on one bad input, bounded in time and memory, and judge what the user saw.

``run_cli(argv)`` calls :func:`selfsup.cli.main.main` (the code ``python -m selfsup`` runs) with stdout and stderr
captured, under a wall-clock alarm (``SIGALRM``: a hang becomes :class:`Hang`) and an address-space limit
(``RLIMIT_AS`` = what the process maps now + ``mem_gib``: an unbounded allocation fails at once instead of
swapping). An exception escaping ``main`` is what a user would see as a traceback.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import resource
import signal
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


class Hang(BaseException):
    """The case ran past its time limit (a BaseException, so no ``except Exception`` in the code swallows it)."""


@dataclass
class Outcome:
    rc: int | None
    stdout: str
    stderr: str
    escaped: str | None = None  # the traceback of an exception that left main(), if any
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines = [ln for ln in self.stderr.splitlines() if ln.strip()]


def _mapped_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def bounded(seconds: float, mem_gib: float):
    """Raise :class:`Hang` after ``seconds``; refuse allocations beyond ``mem_gib`` more than mapped now."""
    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds:.0f}s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _mapped_bytes() + int(mem_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_cli(argv: Sequence[str], seconds: float = 30, mem_gib: float = 3.0) -> Outcome:
    """``main(argv)`` in-process; warnings are shown the way the CLI shows them (one stderr line each)."""
    from selfsup.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    rc: int | None = None
    escaped = None
    old_fmt = warnings.formatwarning
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: print(
                warnings.formatwarning(msg, cat, fn, ln, line), end="", file=err)
            with bounded(seconds, mem_gib):
                try:
                    rc = main(list(argv))
                except SystemExit as e:  # argparse
                    rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (Exception, Hang) as e:  # what the user would see as a traceback (or a hang)
        escaped = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:]
    finally:
        warnings.formatwarning = old_fmt
    return Outcome(rc, out.getvalue(), err.getvalue(), escaped)


class TreeSnapshot:
    """Every file under ``root`` with its stat and (lazily) sha256: 'no file of an existing run changed'.

    ``changed()`` compares stats first and hashes only the files whose stat moved, so checking after each of
    hundreds of cases costs a directory walk, not a read of every checkpoint."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stats = self._stats()
        self.hashes = {name: self._sha(name) for name in self.stats}

    def _stats(self) -> dict[str, tuple[int, int, int]]:
        return {str(p.relative_to(self.root)): (st.st_size, st.st_mtime_ns, st.st_ino)
                for p in sorted(self.root.rglob("*")) if p.is_file() and (st := p.stat())}

    def _sha(self, name: str) -> str:
        return hashlib.sha256((self.root / name).read_bytes()).hexdigest()

    def changed(self) -> list[str]:
        now = self._stats()
        if now == self.stats:
            return []
        diff = sorted(set(now) ^ set(self.stats))
        diff += [n for n in now if n in self.stats and now[n] != self.stats[n] and self._sha(n) != self.hashes[n]]
        return diff


def judge(o: Outcome, needles: Sequence[str], expect: str = "error") -> str | None:
    """None when the outcome is what a user should get, else why not.

    ``expect="error"``: exit code != 0, exactly one stderr line (``selfsup...: error: ...``) containing one of
    ``needles`` (the option or file), no traceback. ``"skip"``: exit code 0 and a counted warning containing a
    needle. ``"ok"``: exit code 0 (a huge-but-legal value that must cost only the real work).
    """
    if o.escaped is not None:
        return f"exception left main():\n{o.escaped}"
    if "Traceback" in o.stderr:
        return f"traceback on stderr:\n{o.stderr[-3000:]}"
    if expect == "ok":
        return None if o.rc == 0 else f"expected success, rc={o.rc}: {o.stderr[-1000:]}"
    if expect == "skip":
        if o.rc != 0:
            return f"expected a counted skip and exit 0, rc={o.rc}: {o.stderr[-1000:]}"
        hits = [ln for ln in o.lines if "warning" in ln and any(n in ln for n in needles)]
        return None if hits else f"no counted warning naming {list(needles)}: {o.stderr[-1000:]}"
    if o.rc in (0, None):
        return f"exit code {o.rc} for a bad input; stderr: {o.stderr[-1000:]}"
    if len(o.lines) != 1:
        return f"{len(o.lines)} stderr lines, expected exactly 1:\n{o.stderr[-3000:]}"
    line = o.lines[0]
    if not line.startswith("selfsup") or ": error: " not in line:
        return f"not a selfsup error line: {line}"
    if needles and not any(n in line for n in needles):
        return f"the line names none of {list(needles)}: {line}"
    return None
