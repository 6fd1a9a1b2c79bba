"""Value ranges of the run configuration, checked once when a config is built.

:mod:`selfsup.config` checks keys and types; this module checks that the values make sense (a probability in
[0, 1], a positive finite learning rate, ``log_every`` >= 1 ...), so that a bad value is a one-line
:class:`~selfsup.config.ConfigError` naming the key before any work, never a ``ZeroDivisionError`` or a NaN
schedule an hour into a run. Method sections are checked by each method's ``Config.validate()``.
"""
from __future__ import annotations

import math
import re
from typing import Any

from .config import RunConfig
from .errors import ConfigError

DEVICE = re.compile(r"^(auto|cpu|mps|xpu|cuda(:\d+)?)$")


def _finite(key: str, v: float) -> None:
    if not math.isfinite(v):
        raise ConfigError(f"{key} must be a finite number, got {v}")


def _at_least(key: str, v: Any, low: float, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    _finite(key, v)
    if v < low:
        raise ConfigError(f"{key} must be >= {low:g}, got {v}")


def _positive(key: str, v: Any, *, optional: bool = False) -> None:
    if v is None and optional:
        return
    _finite(key, v)
    if v <= 0:
        raise ConfigError(f"{key} must be > 0, got {v}")


def _unit(key: str, v: Any, *, open_low: bool = False, open_high: bool = False) -> None:
    """``v`` in [0, 1] (None allowed: the preset's or method's default)."""
    if v is None:
        return
    _finite(key, v)
    if v < 0 or v > 1 or (open_low and v == 0) or (open_high and v == 1):
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise ConfigError(f"{key} must be in {lo}0, 1{hi}, got {v}")


def _choice(key: str, v: str, choices: tuple[str, ...]) -> None:
    if v not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {v!r}")


def check_run_config(cfg: RunConfig) -> RunConfig:
    """Raise :class:`ConfigError` naming the first key whose value is out of range; return ``cfg`` otherwise."""
    d, b, a, o, t = cfg.data, cfg.backbone, cfg.augment, cfg.optim, cfg.train
    if not d.path:
        raise ConfigError("data.path must name a dataset, a .npz file or an image folder")
    _at_least("data.image_size", d.image_size, 1, optional=True)
    _at_least("data.workers", d.workers, 0)
    if not b.name:
        raise ConfigError("backbone.name must not be empty")
    _positive("backbone.width", b.width)
    _at_least("augment.size", a.size, 1, optional=True)
    _unit("augment.crop_scale_min", a.crop_scale_min, open_low=True)
    _unit("augment.crop_scale_max", a.crop_scale_max, open_low=True)
    if a.crop_scale_min is not None and a.crop_scale_max is not None and a.crop_scale_min > a.crop_scale_max:
        raise ConfigError(f"augment.crop_scale_min ({a.crop_scale_min}) must be <= augment.crop_scale_max "
                          f"({a.crop_scale_max})")
    _at_least("augment.jitter_strength", a.jitter_strength, 0, optional=True)
    for name in ("jitter_p", "grayscale_p", "blur_p", "solarize_p", "flip_p"):
        _unit(f"augment.{name}", getattr(a, name))
    _at_least("augment.n_views", a.n_views, 1, optional=True)
    _at_least("augment.local_crops", a.local_crops, 0, optional=True)
    _at_least("augment.local_size", a.local_size, 1, optional=True)
    _unit("augment.local_scale_max", a.local_scale_max, open_low=True)
    _positive("optim.lr", o.lr, optional=True)
    _at_least("optim.weight_decay", o.weight_decay, 0, optional=True)
    _unit("optim.momentum", o.momentum, open_high=True)
    for i, beta in enumerate(o.betas):
        _unit(f"optim.betas[{i}]", beta, open_high=True)
    _at_least("optim.warmup_epochs", o.warmup_epochs, 0)
    _unit("optim.min_lr_ratio", o.min_lr_ratio)
    _at_least("train.epochs", t.epochs, 1)
    _at_least("train.max_steps", t.max_steps, 1, optional=True)
    _positive("train.time_limit_min", t.time_limit_min, optional=True)
    _at_least("train.batch_size", t.batch_size, 2)
    if not DEVICE.match(t.device):
        raise ConfigError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {t.device!r}")
    _choice("train.precision", t.precision, ("auto", "fp32", "bf16"))
    _positive("train.grad_clip", t.grad_clip, optional=True)
    _at_least("train.log_every", t.log_every, 1)
    _at_least("train.checkpoint_every", t.checkpoint_every, 0, optional=True)
    _at_least("train.knn_every", t.knn_every, 0)
    _choice("train.nan_policy", t.nan_policy, ("stop", "skip"))
    return cfg
