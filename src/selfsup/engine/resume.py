"""Resuming a run: which checkpoint to continue from, and the guards a long run needs before it starts.

``--resume`` (same as ``--resume auto``) continues from the newest checkpoint that loads; a damaged one (a file
cut by a crash on a filesystem without atomic rename, a bit flip) is skipped with a warning by
:func:`~selfsup.engine.rundir.latest_checkpoint`. A directory without any checkpoint starts fresh, so the
same command line works for the first launch and for every restart after a pre-emption.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .rundir import CHECKPOINT_DIR, RunDirError, latest_checkpoint, list_checkpoints

RESUME_MODES = ("auto",)


def resume_mode(value: bool | str | None) -> bool:
    """``True``/``"auto"`` → resume; ``False``/``None`` → fresh run. Anything else is an error naming the flag."""
    if value is None or value is False:
        return False
    if value is True or value in RESUME_MODES:
        return True
    raise RunDirError(f"--resume takes no value or 'auto', got '{value}'")


def find_resume_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of ``run_dir``; None when it has none yet (start fresh)."""
    ckdir = Path(run_dir) / CHECKPOINT_DIR
    if ckdir.is_dir():  # temp files of saves cut by a crash (save_checkpoint renames only complete files)
        for tmp in ckdir.glob(".step-*.tmp"):
            tmp.unlink(missing_ok=True)
    if not list_checkpoints(run_dir):
        return None
    return latest_checkpoint(run_dir)


def state_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, torch.Tensor))


def check_free_space(run_dir: Path, method: torch.nn.Module, keep: int = 2) -> None:
    """Fail before training when the disk cannot hold the checkpoints (``keep`` plus one being written).

    A checkpoint is the method's state plus the optimizer's (at most two tensors per parameter for AdamW),
    so three times the method's state is the estimate.
    """
    need = 3 * state_bytes(method) * (keep + 1)
    free = shutil.disk_usage(run_dir).free
    if free < need:
        raise RunDirError(f"not enough free space in {run_dir}: {free / 2**20:.1f} MiB free, checkpoints need "
                          f"about {need / 2**20:.1f} MiB")
