"""Checkpoints: written atomically (temp file + fsync + rename), loaded with ``weights_only=True``.

A checkpoint holds the method's state (backbone, heads, shared parts), the optimizer, the step, the RNG
states and the resolved config. Loading never executes code: ``torch.load(weights_only=True)`` refuses
pickled objects, and we turn that refusal into a one-line error. Reading lives one layer down, in
:mod:`selfsup.checkpoints`, so that methods (BEiT's tokenizer) can load a run without importing the engine.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import load_checkpoint
from ..errors import CheckpointError

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]


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
