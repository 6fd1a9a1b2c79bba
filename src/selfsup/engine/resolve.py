"""The resolve step: every default a run's method, backbone and device imply, filled in before anything is built.

A config leaves some values to the run (None or ``auto``): the global batch (the method's
``default_batch_size``), the optimizer, the learning rate (the method's base rate scaled by ``batch_size / 256``,
Goyal et al. 2017), the weight decay, the augmentation preset, synchronised BatchNorm, the precision and
channels_last. :func:`resolve_config` returns a new config with all of them set, so
the ``config.yaml`` a run writes is the config it trained with: rebuilding a run from that file alone gives the
same run, on any machine. The caller's config is never changed.
"""
from __future__ import annotations

import warnings

import torch

from ..config import RunConfig, build_run_config
from ..data import ImageDataset
from ..errors import ConfigError
from ..methods.base import Method
from .build import build_method_for


def batch_size_of(cfg: RunConfig) -> int:
    """The global batch of a resolved config (:func:`resolve_config` fills it in)."""
    b = cfg.train.batch_size
    if b is None:
        raise RuntimeError("train.batch_size is filled in by resolve_config; this config was not resolved")
    return b


def check_for_data(cfg: RunConfig, data: ImageDataset) -> None:
    """The one check that needs the data: a batch no larger than the training set."""
    t, n = cfg.train, data.train.num_images
    if batch_size_of(cfg) > n:
        raise ConfigError(f"train.batch_size ({t.batch_size}) is larger than the dataset ({n} images in {cfg.data.path})")


def prefers_channels_last(cfg: RunConfig, data: ImageDataset) -> bool:
    """Whether the run's method's backbone asks for channels_last (``Backbone.prefers_channels_last``).

    Read from the method built on the meta device (no memory, no initialisation); a method that cannot be built
    there is built on the CPU. torch's random state is put back either way."""
    args = (cfg, data.channels, data.image_size[0], data.train.num_images)
    with torch.random.fork_rng(devices=[]):
        try:  # (warnings of this build, e.g. loading a checkpoint into meta tensors, are the probe's alone;
            with torch.device("meta"), warnings.catch_warnings():  # the real build warns again)
                warnings.simplefilter("ignore")
                method = build_method_for(*args)
        except ConfigError:
            raise
        except Exception:  # a method whose construction needs real tensors (e.g. colorization's Lab tables)
            method = build_method_for(*args)
    return bool(getattr(method.backbone, "prefers_channels_last", False))


def resolve_config(cfg: RunConfig, method_cls: type[Method], data: ImageDataset, device: torch.device) -> RunConfig:
    """A copy of ``cfg`` with every run-implied default filled in (see the module docstring).

    The copy goes through the config door again (:func:`~selfsup.config.build_run_config`), so a RunConfig
    changed by hand in Python is checked by the same declared ranges as one read from YAML and flags."""
    out = build_run_config(cfg.to_dict())
    o, t = out.optim, out.train
    if t.batch_size is None:
        t.batch_size = method_cls.default_batch_size
    check_for_data(out, data)
    if o.name is None:
        o.name = method_cls.default_optimizer
    if o.lr is None:
        o.lr = method_cls.base_lr * batch_size_of(out) / 256
    if o.weight_decay is None:
        o.weight_decay = method_cls.default_weight_decay
    if out.augment.preset is None:
        out.augment.preset = method_cls.default_augment
    if t.sync_bn is None:
        t.sync_bn = method_cls.needs_sync_bn
    if t.precision == "auto":
        t.precision = "bf16" if device.type == "cuda" else "fp32"
    if t.channels_last is None:
        t.channels_last = prefers_channels_last(out, data)
    return out
