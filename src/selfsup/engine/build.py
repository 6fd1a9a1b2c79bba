"""Building a run's parts from its config: the device, the dataset, the backbone, the method and its views.

Pretraining, evaluation, studies, reports and export all rebuild a run through :func:`build_run` (or, without
the data, :func:`build_method_for`), so a run's model is the same wherever it is rebuilt. This module and
:mod:`selfsup.engine.resolve` are the engine's only readers of the method section of the config
(``cfg.method``: the method's typed Config, whose ``name`` and ``method_class`` say which method it is).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..augment.pipeline import MultiViewPipeline
from ..backbones.base import Backbone, build_backbone
from ..config import RunConfig
from ..data import ImageDataset, load_dataset
from ..errors import ConfigError
from ..methods.base import Method, build_method
from .init_weights import InitReport, load_init_weights


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; a CUDA device on a machine without one is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine")
    return dev


@dataclass
class Built:
    """Everything a run needs, built from a config (also used by evaluation to rebuild a run's model)."""

    cfg: RunConfig
    data: ImageDataset
    method: Method
    views: MultiViewPipeline
    device: torch.device
    init: InitReport | None = None  # what ``backbone.init`` loaded (a fresh pretraining run only)


def method_class(cfg: RunConfig) -> type[Method]:
    """The registered class of the run's method."""
    return cfg.method.method_class


def load_data(cfg: RunConfig) -> ImageDataset:
    """The dataset named by ``cfg.data``."""
    d = cfg.data
    return load_dataset(d.path, d.image_size, test_path=d.test_path, workers=d.workers,
                        full_image=d.full_image_scale if d.full_image else None)


def build_backbone_for(cfg: RunConfig, channels: int, image_size: int) -> Backbone:
    """The run's backbone for data with ``channels`` channels and ``image_size`` pixels (current RNG, no seed)."""
    b = cfg.backbone
    in_channels = method_class(cfg).backbone_in_channels(channels)
    return build_backbone(b.name, in_channels=in_channels, width=b.width, cifar_stem=b.cifar_stem,
                          image_size=image_size, patch_size=b.patch_size, registers=b.registers)


def build_method_for(cfg: RunConfig, channels: int, image_size: int, num_train: int,
                     reports: list[InitReport] | None = None) -> Method:
    """Backbone and method from ``cfg``, with the weights initialised from ``cfg.train.seed`` (on the CPU).

    With ``reports`` (a list; pretraining's fresh start only) the backbone first loads ``cfg.backbone.init``,
    before the method is built around it (so a momentum teacher copies the loaded weights), and what it loaded
    is appended to ``reports``. Rebuilding a saved run passes none: its checkpoint holds the weights."""
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone_for(cfg, channels, image_size)
    if reports is not None and cfg.backbone.init is not None:
        reports.append(load_init_weights(backbone, cfg.backbone.init, cfg.backbone.name))
    return build_method(cfg.method, backbone, num_train=num_train)


def check_pretraining_data(cfg: RunConfig, data: ImageDataset) -> None:
    """A method that declares ``needs_labels`` (a supervised reference) pretrains only on labelled data."""
    if method_class(cfg).needs_labels and data.train.labels is None:
        raise ConfigError(f"method.name: '{method_name(cfg)}' trains on class labels (a supervised reference) and "
                          f"the training split of '{data.name}' has none; use a labelled dataset")


def build_run(cfg: RunConfig, data: ImageDataset | None = None, device: torch.device | None = None, *,
              init: bool = False) -> Built:
    """Dataset, backbone, method and view pipeline from ``cfg``, the method on ``device``; ``init``: start the
    backbone from ``cfg.backbone.init`` (a fresh pretraining run)."""
    data = data or load_data(cfg)
    device = device or resolve_device(cfg.train.device)
    size = data.image_size[0]
    reports: list[InitReport] | None = [] if init else None
    method = build_method_for(cfg, data.channels, size, data.train.num_images, reports)
    views = method.make_views(size, data.mean, data.std, cfg.augment)
    return Built(cfg, data, method.to(device), views, device, reports[0] if reports else None)


def method_name(cfg: RunConfig) -> str:
    """The registered name of the run's method."""
    return cfg.method.name
