"""One writer per run directory: an exclusive ``flock`` on ``RUN/.lock`` for the whole life of a run.

Two trainings on one ``--out`` (or a second ``--resume`` while the first still trains) would interleave
``metrics.jsonl`` and overwrite each other's checkpoints; ``--overwrite`` would delete a live run. The lock is
taken before anything in the directory is read, deleted or written, and released when the run ends. The file
holds the holder's pid, so the refusal can name it.

A lock left by a killed process is never stale: ``flock`` locks belong to the open file, and the kernel releases
them when the process dies (SIGKILL, OOM, power loss), so ``--resume`` after a crash just takes it again (the old
pid in the file is overwritten). ``flock`` is advisory and local: on NFS it may be emulated or absent (then
every lock succeeds, as before this guard existed). Under ``torchrun`` only rank 0 takes it.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType

from ..errors import RunDirError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are unguarded there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def holder_pid(path: Path) -> str:
    """The pid written in a lock file, or ``?`` when it cannot be read."""
    try:
        text = path.read_text().strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


class RunLock:
    """``RunLock(dir).acquire()`` ... ``release()``; also a context manager. Acquiring twice is a no-op."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, what: str = "run directory") -> "RunLock":
        """Take the lock or raise :class:`RunDirError` naming the holder's pid (never waits)."""
        if self.fd is not None or fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(
                    f"{self.run_dir} is in use by another selfsup process (pid {holder_pid(self.path)}); "
                    f"wait for it to end or stop it before using this {what}") from None
            if e.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP):
                return self  # a filesystem without locks: unguarded, as documented
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Unlock and close (the file stays: deleting it would let two processes lock two different files)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, tp: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
