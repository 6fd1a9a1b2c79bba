"""Reading checkpoints safely: one file (``weights_only=True``), or the newest readable one of a run directory.

The lowest layer that touches checkpoint files, so that any layer may read a run: the engine (resume, export),
evaluation, viz, studies and methods (BEiT loads its tokenizer run). Writing is the engine's
(:mod:`selfsup.engine.checkpoint`). Loading never executes code: ``torch.load(weights_only=True)`` refuses pickled
objects, and the refusal becomes a one-line :class:`~selfsup.errors.CheckpointError`.
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, RunDirError

CHECKPOINT_DIR = "checkpoints"  # a run's checkpoints: RUN/checkpoints/step-<8 digits>.pt


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


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, newest first."""
    d = Path(run_dir) / CHECKPOINT_DIR
    return sorted(d.glob("step-*.pt"), reverse=True) if d.is_dir() else []


def latest_checkpoint(run_dir: str | Path, *, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that loads; a damaged one is skipped with a warning."""
    cands = list_checkpoints(run_dir)
    if not cands:
        raise RunDirError(f"{run_dir}: no checkpoint found (expected {CHECKPOINT_DIR}/step-*.pt); "
                          "pretrain first with `selfsup pretrain --out` this directory")
    errors = []
    for p in cands:
        try:
            return p, load_checkpoint(p)
        except CheckpointError as e:
            if not verify:
                raise
            errors.append(str(e))
            warnings.warn(f"skipping damaged checkpoint {p.name}: {e}", stacklevel=2)
    raise RunDirError(f"{run_dir}: no readable checkpoint ({errors[0]})")
