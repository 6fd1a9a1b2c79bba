"""Run directories: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/step-*.pt``, ``run.json``, ``eval.json``."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..checkpoints import CHECKPOINT_DIR, latest_checkpoint, list_checkpoints
from ..errors import RunDirError

__all__ = ["CHECKPOINT_DIR", "RunDirError", "checkpoint_path", "latest_checkpoint", "list_checkpoints",
           "prepare_run_dir", "prune_checkpoints", "truncate_metrics", "write_config", "write_json"]


def prepare_run_dir(out: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Create or check ``out``: refuse to mix two runs, and fail early if it is not writable."""
    out = Path(out)
    holds_run = (out / "config.yaml").exists() or (out / CHECKPOINT_DIR).exists()
    if holds_run and not (resume or overwrite):
        raise RunDirError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if overwrite and not resume and out.exists():
        for name in ("config.yaml", "metrics.jsonl", "run.json", "eval.json", CHECKPOINT_DIR, "tb", "features"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {out}: {e.strerror or e}") from None
    return out


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    _write_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def _write_atomic(path: Path, text: str) -> None:
    """Temp file + rename: a kill while writing leaves the old file, never a truncated one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def prune_checkpoints(run_dir: Path, keep: int = 2) -> None:
    for p in list_checkpoints(run_dir)[keep:]:
        p.unlink(missing_ok=True)


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
