"""Resuming a run: which checkpoint to continue from, and the guards a long run needs before it starts.

``--resume`` (same as ``--resume auto``) continues from the newest checkpoint that loads; a damaged one (a file
cut by a crash on a filesystem without atomic rename, a bit flip) is skipped with a warning by
:func:`~selfsup.engine.rundir.latest_checkpoint`. A directory without any checkpoint starts fresh, so the
same command line works for the first launch and for every restart after a pre-emption.

Resuming also checks that the run is the same run: :func:`check_resume_config` compares the new resolved config
with the checkpoint's and refuses a change to any key outside :data:`SAFE_ON_RESUME`; accepted changes are
recorded in ``RUN/resumes.jsonl`` (``config.yaml`` is not rewritten). A run with nothing left to do is left as it
is (:func:`already_finished`).
"""
from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import load_run_checkpoint
from ..errors import ConfigError
from .rundir import CHECKPOINT_DIR, RunDirError, list_checkpoints, strict_json

RESUME_MODES = ("auto",)


def resume_mode(value: bool | str | None) -> bool:
    """``True``/``"auto"`` → resume; ``False``/``None`` → fresh run. Anything else is an error naming the flag."""
    if value is None or value is False:
        return False
    if value is True or value in RESUME_MODES:
        return True
    raise RunDirError(f"--resume takes no value or 'auto', got '{value}'")


def find_resume_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of ``run_dir``, checked to hold what training needs to continue (a foreign
    one is a one-line CheckpointError); None when it has none yet (start fresh)."""
    ckdir = Path(run_dir) / CHECKPOINT_DIR
    if ckdir.is_dir():  # temp files of saves cut by a crash (save_checkpoint renames only complete files)
        for tmp in ckdir.glob(".step-*.tmp"):
            tmp.unlink(missing_ok=True)
    if not list_checkpoints(run_dir):
        return None
    return load_run_checkpoint(run_dir, resume=True)


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


# ------------------------------------------------------------------------------------------ config on resume
# Keys that may differ between a checkpoint's config and the resuming one: they change how the run is executed,
# stopped, logged or checkpointed, never what its steps compute (or, nan_policy, only what happens to a step whose
# update is non-finite, so that a run stopped by a NaN can be continued with skip). Every other key (method.*,
# backbone.*, data.path, data.image_size, augment.*, optim.*, train.epochs, batch_size, seed, precision,
# grad_clip, grad_accum_steps, sync_bn) is part of what the checkpointed steps mean, and a change is refused.
SAFE_ON_RESUME = (
    "train.time_limit_min", "train.max_steps", "train.checkpoint_every", "train.log_every", "train.knn_every",
    "train.device", "train.compile", "train.channels_last", "train.stop_on_collapse", "train.dist_timeout_min",
    "train.nan_policy", "train.requeue_signal", "data.workers", "data.test_path", "optim.fused",
    # checkpoints hold full tensors either way (engine/fsdp.py): a run trained sharded resumes unsharded and back
    "train.fsdp", "train.activation_checkpointing",
    "backbone.init",  # read at a fresh start only: a resume continues from the checkpoint's weights
)
RESUMES_FILE = "resumes.jsonl"


def flatten_config(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"seed": 0}}`` → ``{"train.seed": 0}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _device_type(name: Any) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(str(name)).type
    except (RuntimeError, ValueError):
        return str(name)


def config_defaults(method: Any) -> dict[str, Any]:
    """Dotted defaults of every config key (the method's from its ``Config``), for keys older runs do not have."""
    from ..config import RunConfig, to_plain
    from ..registry import METHODS

    out = flatten_config(RunConfig().to_dict())
    out = {k: v for k, v in out.items() if not k.startswith("method.")}
    try:
        out.update(flatten_config({"method": to_plain(METHODS.get(method).Config())}))
    except Exception:  # an unknown method name: nothing to default, the name itself differs
        pass
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any],
                   defaults: dict[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs (absent on one side: ``None`` there), sorted by key.

    A key the saved config lacks (a run from a version without it) is no change when the new value is its default.
    """
    a, b = flatten_config(saved), flatten_config(new)
    defaults = defaults or {}
    missing = object()
    out = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va is missing and k in defaults and vb == defaults[k]:
            continue
        if va != vb:
            out[k] = (None if va is missing else va, None if vb is missing else vb)
    return out


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume_config(saved: Any, new: dict[str, Any], ckpt_file: Path) -> dict[str, tuple[Any, Any]]:
    """The safe changes between the checkpoint's config and ``new``; a ConfigError listing any other change.

    ``train.device`` is safe only within one device type (the augmentation generator's state is per type).
    """
    if not isinstance(saved, dict):
        raise ConfigError(f"{ckpt_file}: the checkpoint holds no saved config to compare with; it cannot be resumed")
    changes = config_changes(saved, new, config_defaults(new.get("method", {}).get("name")))
    bad = {k: v for k, v in changes.items()
           if k not in SAFE_ON_RESUME or (k == "train.device" and _device_type(v[0]) != _device_type(v[1]))}
    if bad:
        diff = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in bad.items())
        raise ConfigError(
            f"--resume: the config differs from the one {ckpt_file.name} was trained with: {diff}; these keys "
            "define what the checkpointed steps mean; resume with the run's config (config.yaml) or start a new "
            "run (another --out, or --overwrite)")
    return changes


def check_resume_data(saved: Any, channels: int, image_size: Any, num_train: int, ckpt_file: Path,
                      fingerprint: str | None = None) -> None:
    """The data behind ``data.path`` must still be the data the checkpoint was trained on (shape and size; for a
    shard folder also its shards and their members, the ``fingerprint`` its position in an epoch refers to)."""
    if not isinstance(saved, dict):
        return
    if fingerprint is not None and saved.get("fingerprint") not in (None, fingerprint):
        raise ConfigError(f"--resume: the shards of data.path are not those {ckpt_file.name} was trained on (other "
                          "shard files or other images in them), so its position in the epoch would point elsewhere; "
                          "resume on the run's shards or start a new run")
    now = {"channels": channels, "image_size": list(image_size), "num_train": num_train}
    diff = [f"{k} {saved[k]!r} -> {v!r}" for k, v in now.items() if k in saved and _plain(saved[k]) != _plain(v)]
    if diff:
        raise ConfigError(f"--resume: data.path holds other data than {ckpt_file.name} was trained on "
                          f"({', '.join(diff)}); resume on the run's data or start a new run")


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def record_resume(run_dir: Path, step: int, ckpt_file: Path, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append one line to ``RUN/resumes.jsonl`` (time, step, checkpoint, accepted changes), fsynced.

    ``config.yaml`` keeps describing how the run was launched; this file says what changed after.
    """
    rec = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "step": step,
           "checkpoint": ckpt_file.name, "changed": {k: [a, b] for k, (a, b) in changes.items()}}
    with (run_dir / RESUMES_FILE).open("a") as f:
        f.write(json.dumps(strict_json(rec)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def already_finished(run_dir: Path, step: int, total_steps: int, max_steps: int | None) -> str | None:
    """The line to print when a resumed run has nothing left to do (files stay unchanged), else None."""
    if step >= total_steps:
        return f"{run_dir} already finished at step {step}/{total_steps}; nothing to do, files unchanged"
    if max_steps is not None and step >= max_steps:
        return (f"{run_dir} is already at train.max_steps={max_steps} (step {step}/{total_steps}); nothing to do, "
                "files unchanged; raise train.max_steps to continue")
    return None


def previous_result(run_dir: Path) -> tuple[float, float]:
    """``images_per_s`` and ``final_loss`` from a finished run's ``run.json`` (NaN where missing or unreadable)."""
    try:
        data = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}

    def num(key: str) -> float:
        v = data.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")

    return num("images_per_s"), num("final_loss")
