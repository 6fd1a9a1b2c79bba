"""Checkpoints: written atomically (temp file + fsync + rename + directory fsync), loaded with ``weights_only=True``.

A checkpoint holds the method's state (backbone, heads, shared parts), the optimizer, the step, the RNG
states and the resolved config. Loading never executes code: ``torch.load(weights_only=True)`` refuses
pickled objects, and we turn that refusal into a one-line error. Reading lives one layer down, in
:mod:`selfsup.checkpoints`, so that methods (BEiT's tokenizer) can load a run without importing the engine. A
save that fails (a full disk, an I/O error) is a one-line :class:`CheckpointError` saying that the checkpoints
written before are intact (they are: the new one goes to a temp file that is removed).
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import REFUSED, check_checkpoint, load_checkpoint, load_method_state
from ..errors import CheckpointError

__all__ = ["REFUSED", "CheckpointError", "check_checkpoint", "fsync_path", "load_checkpoint", "load_method_state",
           "save_checkpoint"]


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (a rename into a directory survives a power loss once the directory is
    synced); a no-op when it cannot be opened or the filesystem refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory
    finally:
        os.close(fd)


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch.save wraps a failed write in a RuntimeError of its zip writer."""
    cur: BaseException | None = e
    for _ in range(8):
        if cur is None or isinstance(cur, OSError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _save_failed(path: Path, err: OSError) -> CheckpointError:
    older = sorted(p.name for p in path.parent.glob("step-*.pt") if p.name != path.name)
    kept = f"the previous checkpoints are intact (newest: {older[-1]})" if older else "no earlier checkpoint exists"
    what = "no space left on device" if err.errno in (errno.ENOSPC, errno.EDQUOT) else (err.strerror or str(err))
    return CheckpointError(f"cannot write checkpoint {path}: {what}; {kept}; free space and continue with --resume")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically and durably: a crash or a power loss leaves the old file or the new
    one, never half of one (temp file, fsync, rename, directory fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        err = _os_error(e) if isinstance(e, (OSError, RuntimeError)) else None
        if err is not None:
            raise _save_failed(path, err) from None
        raise
    fsync_path(path.parent)
    return path
