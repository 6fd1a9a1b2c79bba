"""Checkpoints: written atomically (temp file + fsync + rename), loaded with ``weights_only=True``.

A checkpoint holds the method's state (backbone, heads, shared parts), the optimizer, the step, the RNG
states and the resolved config. Loading never executes code: ``torch.load(weights_only=True)`` refuses
pickled objects, and we turn that refusal into a one-line error.
"""
from __future__ import annotations

import os
import pickle
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
        # torch's message starts with advice to retry unsafely; keep only the line naming the refused global
        glob = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), None)
        if glob is None:  # a weights-only unpickler error without a global: a damaged file, not code
            raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or not written by torch.save)") from None
        raise CheckpointError(f"{path}: refused to load, it contains objects that would execute code ({glob})") from None
    except Exception as e:  # truncated zip, not a checkpoint, ...
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
