"""Run directories: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/step-*.pt``, ``run.json``, ``eval.json``.

Every whole-file write here is durable and atomic: a temp file is written, fsynced, renamed over the old one, and
the directory is fsynced, so neither a kill nor a power loss leaves an empty or half-written file.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

from ..checkpoints import CHECKPOINT_DIR, latest_checkpoint, list_checkpoints
from ..errors import CheckpointError, RunDirError
from .checkpoint import fsync_path, load_checkpoint
from .lock import RunLock
from .nonfinite import tensors_finite

__all__ = ["RunDirError", "CHECKPOINT_DIR", "prepare_run_dir", "write_config", "write_json", "checkpoint_path",
           "list_checkpoints", "latest_checkpoint", "prune_checkpoints", "truncate_metrics", "strict_json",
           "checkpoint_is_finite"]

RUN_FILES = ("config.yaml", "metrics.jsonl", "run.json", "eval.json", "resumes.jsonl", CHECKPOINT_DIR, "tb",
             "features")


def prepare_run_dir(out: str | Path, *, resume: bool, overwrite: bool, lock: RunLock | None = None) -> Path:
    """Create or check ``out``: refuse to mix two runs, and fail early if it is not writable.

    ``lock`` (engine/lock.py) is acquired before anything in ``out`` is looked at or deleted, so a live run in
    ``out`` is never mixed with, resumed twice or deleted by ``--overwrite``; the caller releases it.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if lock is not None:
            lock.acquire("run directory (--resume and --overwrite included)")
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {out}: {e.strerror or e}") from None
    holds_run = (out / "config.yaml").exists() or (out / CHECKPOINT_DIR).exists()
    if holds_run and not (resume or overwrite):
        raise RunDirError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if overwrite and not resume and out.exists():
        for name in RUN_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        probe = out / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {out}: {e.strerror or e}") from None
    return out


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    _write_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def _write_atomic(path: Path, text: str) -> None:
    """Temp file + fsync + rename + directory fsync: a kill or a power loss leaves the old file or the new one.

    A failed write (ENOSPC, EIO) is a one-line :class:`RunDirError` and leaves the old file as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path}: {e.strerror or e}; the previous {path.name} is intact") from None
    fsync_path(path.parent)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None: JSON that any parser accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Strict JSON (no NaN/Infinity: they are written as null), durably and atomically."""
    _write_atomic(path, json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def prune_checkpoints(run_dir: Path, keep: int = 2, *, newest_finite: bool = True,
                      is_finite: Callable[[Path], bool] | None = None) -> None:
    """Keep the ``keep`` newest checkpoints, and always the newest one whose tensors are all finite.

    ``newest_finite``: whether the checkpoint just written is finite (the trainer knows it without reading the
    file back). Only when it is not are the older ones read, newest first, to find the finite one to keep.
    """
    cands = list_checkpoints(run_dir)
    drop = cands[keep:]
    if not newest_finite:
        check = is_finite or checkpoint_is_finite
        keep_finite = next((p for p in cands[1:] if check(p)), None)
        drop = [p for p in drop if p != keep_finite]
    for p in drop:
        p.unlink(missing_ok=True)


def checkpoint_is_finite(path: Path) -> bool:
    """Whether every floating-point tensor of a checkpoint's method state is finite (False if it does not load)."""
    try:
        ck = load_checkpoint(path)
    except CheckpointError:
        return False
    return isinstance(ck, dict) and isinstance(ck.get("method"), dict) and tensors_finite(ck["method"])


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop logged lines after the checkpoint's step so the curve continues without duplicates."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    _write_atomic(path, "".join(k + "\n" for k in keep))
