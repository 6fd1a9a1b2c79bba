"""Using a finished (or running) run from ``eval``, ``export``, ``report`` and ``pretrain --resume``.

- :func:`load_run_checkpoint`: the newest checkpoint that loads (an unreadable one is skipped with a warning when
  an older one loads), which must be a selfsup checkpoint (:func:`~selfsup.engine.checkpoint.check_checkpoint`);
  a foreign one (a plain state_dict, a list, a torchvision model) is one line naming the file.
- :func:`rebuild_method`: the checkpoint's method from its own config, with its weights (one line when they do
  not fit: another method's, other shapes).
- :func:`check_resumable`: all of the above before ``pretrain --resume`` builds anything (memory-mapped, so it
  costs a model build, not a second read of the checkpoint).
- :func:`check_writable`: an output file can be written (a probe file beside it), before any long work.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import build_run_config, method_config
from ..errors import ConfigError
from .checkpoint import CheckpointError, check_checkpoint, load_checkpoint, load_method_state
from .rundir import CHECKPOINT_DIR, RunDirError, list_checkpoints


def load_run_checkpoint(run_dir: str | Path, *, resume: bool = False,
                        mmap: bool = False) -> tuple[Path, dict[str, Any]]:
    """(path, checkpoint) of the newest checkpoint of ``run_dir`` that loads, checked to be a selfsup one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory not found: {run_dir}")
    cands = list_checkpoints(run_dir)
    if not cands:
        raise RunDirError(f"{run_dir}: no checkpoint found (expected {CHECKPOINT_DIR}/step-*.pt); "
                          "pretrain first with `selfsup pretrain --out` this directory")
    skipped: list[str] = []
    for p in cands:
        try:
            ckpt = load_checkpoint(p, mmap=mmap)
        except CheckpointError as e:
            skipped.append(str(e))
            continue
        for msg in skipped:  # only now: when nothing loads, the error below says it once
            warnings.warn(f"skipping damaged checkpoint: {msg}", stacklevel=2)
        return p, check_checkpoint(ckpt, p, resume=resume)
    more = f" (and {len(skipped) - 1} older ones)" if len(skipped) > 1 else ""
    raise CheckpointError(f"no readable checkpoint in {run_dir}: {skipped[0]}{more}")


def saved_config(ckpt: dict[str, Any], path: str | Path):
    """The checkpoint's run configuration; an invalid one is a line naming the checkpoint."""
    try:
        return build_run_config(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config is invalid ({e})") from None


def rebuild_method(ckpt: dict[str, Any], path: str | Path = "checkpoint"):
    """The checkpoint's method with its weights loaded, rebuilt from the saved config (no data loading when the
    checkpoint records the data's shape, as every checkpoint written by this version does)."""
    from ..backbones.base import build_backbone
    from ..methods.base import build_method
    from ..registry import METHODS

    cfg = saved_config(ckpt, path)
    info = ckpt.get("data")
    try:
        if info is None:  # older checkpoints: the dataset tells the channels and size
            from .trainer import build_run

            method = build_run(cfg, device=torch.device("cpu")).method
        else:
            torch.manual_seed(cfg.train.seed)
            in_channels = METHODS.get(cfg.method["name"]).backbone_in_channels(int(info["channels"]))
            backbone = build_backbone(cfg.backbone.name, in_channels=in_channels, width=cfg.backbone.width,
                                      cifar_stem=cfg.backbone.cifar_stem, image_size=int(info["image_size"][0]),
                                      patch_size=cfg.backbone.patch_size)
            method = build_method(cfg.method["name"], backbone, method_config(cfg), num_train=int(info["num_train"]))
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config does not build a model ({e})") from None
    load_method_state(method, ckpt["method"], path)
    return method.eval()


def check_resumable(run_dir: str | Path) -> None:
    """Before ``pretrain --resume``: the checkpoint it would continue from is a selfsup one whose weights fit the
    model of its own config. Nothing to check when the run has no checkpoint yet (it starts fresh)."""
    if not list_checkpoints(run_dir):
        return
    with warnings.catch_warnings():  # the trainer warns about skipped checkpoints itself
        warnings.simplefilter("ignore")
        path, ckpt = load_run_checkpoint(run_dir, resume=True, mmap=True)
        if ckpt.get("data") is not None:  # (an old checkpoint without it would need the data loaded: skip)
            rebuild_method(ckpt, path)


def check_writable(path: str | Path, what: str) -> None:
    """``path`` (a file to be written) can be created: its folder exists or can be made, and takes a file."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunDirError(f"cannot write {what} {path}: {e.strerror or e}") from None
