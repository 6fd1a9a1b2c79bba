"""Using a finished (or running) run from ``eval``, ``export``, ``report`` and ``pretrain --resume``.

- :func:`load_run_checkpoint`: the newest checkpoint that loads (an unreadable one is skipped with a warning when
  an older one loads), which must be a selfsup checkpoint (:func:`~selfsup.checkpoints.check_checkpoint`;
  both live in the bottom layer, :mod:`selfsup.checkpoints`, so that methods can read runs too);
  a foreign one (a plain state_dict, a list, a torchvision model) is one line naming the file.
- :func:`rebuild_method`: the checkpoint's method from its own config, with its weights (one line when they do
  not fit: another method's, other shapes).
- :func:`check_writable`: an output file can be written (a probe file beside it), before any long work.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import load_method_state, load_run_checkpoint
from ..config import RunConfig, build_run_config
from ..errors import CheckpointError, ConfigError, RunDirError
from ..methods.base import Method
from .build import build_method_for, build_run

__all__ = ["check_writable", "load_run_checkpoint", "rebuild_method", "saved_config"]


def saved_config(ckpt: dict[str, Any], path: str | Path) -> RunConfig:
    """The checkpoint's run configuration; an invalid one is a line naming the checkpoint."""
    try:
        return build_run_config(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config is invalid ({e})") from None


def rebuild_method(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> Method:
    """The checkpoint's method with its weights loaded, rebuilt from the saved config (no data loading when the
    checkpoint records the data's shape, as every checkpoint written by this version does)."""
    cfg = saved_config(ckpt, path)
    info = ckpt.get("data")
    try:
        if info is None:  # older checkpoints: the dataset tells the channels and size
            method = build_run(cfg, device=torch.device("cpu")).method
        else:
            method = build_method_for(cfg, int(info["channels"]), int(info["image_size"][0]), int(info["num_train"]))
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config does not build a model ({e})") from None
    load_method_state(method, ckpt["method"], path)
    return method.eval()


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
