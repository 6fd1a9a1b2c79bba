"""Checkpoints: written atomically (temp file + fsync + rename), loaded with ``weights_only=True``.

A checkpoint holds the method's state (backbone, heads, shared parts), the optimizer, the step, the RNG
states and the resolved config. Loading never executes code: ``torch.load(weights_only=True)`` refuses
pickled objects, and we turn that refusal into a one-line error.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; anything that would need code execution is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:  # the pickle imports and calls something: a code-execution attempt or a foreign object
            raise CheckpointError(f"{path}: refused to load, it contains objects that would execute code "
                                  f"(it imports {found.group(1)}); selfsup loads tensors and plain data only") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        reason = detail.group(1).strip() if detail else (str(e).strip().splitlines() or ["unpickling failed"])[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    except Exception as e:  # truncated zip, not a checkpoint, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
