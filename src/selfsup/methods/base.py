"""The Method contract: an ``nn.Module`` that takes a batch of views and returns a typed :class:`MethodOutput`.

A method owns its backbone, heads and shared parts (EMA teacher, queue, ...), declares its default view
pipeline and optimizer settings, and knows nothing about the trainer: the same object runs inside
:mod:`selfsup.engine` or in a ten-line loop of your own::

    method = build_method("simclr", backbone)          # or build_method(cfg.method, backbone) for a run's config
    views = method.make_views(image_size=32, mean=..., std=...)
    out = method(ViewBatch(views(x_uint8), index), StepContext(step, total))
    out.loss.backward(); opt.step(); update_parts(method, ctx)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..augment.pipeline import MultiViewPipeline, Views
from ..augment.presets import ViewOverrides, build_pipeline
from ..backbones.base import Backbone
from ..components.base import StepContext
from ..config import AugmentConfig, MethodConfig, from_dict, to_plain
from ..config_checks import check_values
from ..errors import ConfigError


@dataclass
class ViewBatch:
    """Views of one batch: ``views[i]`` is (B, C, H_i, W_i) float; ``index`` (B,) the images' dataset indices;
    ``labels`` (B,) int64 class labels, set by the engine for a method that declares ``needs_labels``;
    ``boxes[i]`` (B, 5) view i's crop box (:class:`~selfsup.augment.pipeline.Views`), taken from ``views`` when
    the pipeline recorded them and none are given."""

    views: list[torch.Tensor]
    index: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    boxes: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.boxes is None and isinstance(self.views, Views):
            self.boxes = self.views.boxes


@dataclass
class MethodOutput:
    """``loss``: scalar to minimise; ``logs``: scalars to record (tensors, no host sync needed);
    ``embedding``: (B, D) representation used by collapse monitors (optional);
    ``probs``: (B, K) softmax outputs of softmax-output methods (DINO, SwAV) for the entropy monitors (optional)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    embedding: torch.Tensor | None = None
    probs: torch.Tensor | None = None


class Method(nn.Module):
    """Base class. Subclasses set ``Config``, ``default_augment``, ``base_lr`` and implement ``forward``.

    The contract a subclass declares instead of checking by hand:

    - ``n_views``: the number of views a batch must hold (None: any number, at least ``min_views``);
      ``needs_index``: the batch must carry the images' dataset indices (memory banks);
      ``needs_boxes``: the batch must carry every view's crop box (``ViewBatch.boxes``; :meth:`make_views` then
      builds a pipeline that records them). :meth:`check_batch` enforces these before every ``forward`` (a forward
      pre-hook, so the engine, a user's loop and the tests all go through it). ``needs_labels``: the batch must
      carry class labels (``ViewBatch.labels``; supervised references such as SupCon); the engine passes the
      dataset's labels then and refuses unlabelled data.
    - shared parts (:class:`~selfsup.components.base.SharedPart`: EMA teachers, queues, memory banks, centers,
      priors) only *stage* in ``forward``; their state changes in ``after_step``, which the engine (or
      :func:`~selfsup.components.base.update_parts`) calls after the optimizer step.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig  # register_method gives each method its own
    default_augment: ClassVar[str] = "simclr"
    default_optimizer: ClassVar[str] = "sgd"
    base_lr: ClassVar[float] = 0.3  # at batch 256; scaled linearly with the batch size
    default_weight_decay: ClassVar[float] = 1e-4
    default_batch_size: ClassVar[int] = 256  # the global batch when train.batch_size is not given
    supports_multicrop: ClassVar[bool] = False
    # under torchrun: BatchNorm statistics over the global batch (engine/distributed.py; train.sync_bn overrides)
    needs_sync_bn: ClassVar[bool] = False
    n_views: ClassVar[int | None] = None  # exactly this many views per batch; None: any number >= min_views
    min_views: ClassVar[int] = 1
    needs_index: ClassVar[bool] = False  # ViewBatch.index must be set (the dataset indices address a memory bank)
    needs_labels: ClassVar[bool] = False  # ViewBatch.labels must be set (a supervised reference: it uses labels)
    needs_boxes: ClassVar[bool] = False  # ViewBatch.boxes must be set (methods that match locations across views)

    def __init__(self, backbone: Backbone, cfg: Any = None, *, num_train: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg if cfg is not None else self.Config()
        self.num_train = num_train
        self.register_forward_pre_hook(_check_batch_hook, with_kwargs=True)

    def check_batch(self, batch: ViewBatch) -> None:
        """Raise ``ValueError`` for a batch this method cannot take; runs before every ``forward``.

        The default checks the declared ``n_views`` / ``min_views``, ``needs_index``, ``needs_labels`` and
        ``needs_boxes``; subclasses extend it (calling ``super().check_batch(batch)``) with checks of their own, e.g. the batch size a queue needs.
        """
        n, name = len(batch.views), self.method_name()
        if self.n_views is not None and n != self.n_views:
            raise ValueError(f"{name} expects {_views(self.n_views)}, got {n} "
                             "(check augment.n_views, augment.local_crops and augment.preset)")
        if n < self.min_views:
            raise ValueError(f"{name} expects at least {_views(self.min_views)} (global crops first), got {n}")
        if self.needs_index and batch.index is None:
            raise ValueError(f"{name} needs the images' dataset indices (ViewBatch.index) to address its memory bank")
        if self.needs_labels:
            if batch.labels is None:
                raise ValueError(f"{name} uses class labels (ViewBatch.labels): pass the batch's labels")
            if batch.labels.shape != batch.views[0].shape[:1]:
                raise ValueError(f"{name} expects one label per image, got labels of shape "
                                 f"{tuple(batch.labels.shape)} for {batch.views[0].shape[0]} images")
        if self.needs_boxes and (batch.boxes is None or len(batch.boxes) != n):
            raise ValueError(f"{name} needs every view's crop box (ViewBatch.boxes): build the views with "
                             "method.make_views(...), which records them")

    def make_views(self, image_size: int, mean: Sequence[float], std: Sequence[float],
                   augment: AugmentConfig | None = None) -> MultiViewPipeline:
        """The view pipeline this method trains with (its default preset, overridable by ``augment``)."""
        overrides = ViewOverrides.of(augment)  # the config section → augment/'s own overrides object
        if (overrides.local_crops or 0) > 0 and not self.supports_multicrop:
            raise ConfigError(f"augment.local_crops: method '{self.method_name()}' does not support multi-crop")
        pipe = build_pipeline(overrides, self.default_augment, image_size, mean, std)
        pipe.record_boxes = self.needs_boxes
        self._check_view_count(sum(s.size == pipe.specs[0].size for s in pipe.specs), overrides)
        return pipe

    def _check_view_count(self, n: int, overrides: ViewOverrides) -> None:
        """The declared ``n_views``/``min_views`` against the ``n`` global views (those at the first view's size;
        local crops are smaller) the augment section makes: refused here, before any training. Local crops for a
        method without multi-crop are :meth:`check_batch`'s to refuse, naming the options."""
        if (self.n_views is None or n == self.n_views) and n >= self.min_views:
            return
        takes = _views(self.n_views) if self.n_views is not None else f"at least {_views(self.min_views)}"
        raise ConfigError(f"augment.n_views: method '{self.method_name()}' takes {takes}, the augment section "
                          f"(preset {overrides.preset or self.default_augment}, n_views {overrides.n_views}) "
                          f"makes {n}")

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers by parameter name (``named_parameters``), for pretraining with layer-wise lr
        decay (DINOv2); a parameter not named gets 1. The engine's optimizer groups carry them as ``lr_scale`` and
        every step sets a group's lr to the schedule's value times its scale. Default: none (one lr for all)."""
        return {}

    def eval_backbone(self) -> Backbone:
        """The encoder whose features are evaluated (the online/student backbone by default)."""
        return self.backbone

    @classmethod
    def backbone_in_channels(cls, data_channels: int) -> int:
        """Input channels of the backbone built for this method from data with ``data_channels`` channels.

        The data's channels by default; colorization's backbone sees L only (1). Methods whose backbone differs
        return an :meth:`eval_backbone` that accepts the data's channels, so evaluation is unchanged.
        """
        return data_channels

    @classmethod
    def method_name(cls) -> str:
        return getattr(cls, "registered_name", cls.__name__.lower())

    def forward(self, batch: ViewBatch, ctx: StepContext | None = None) -> MethodOutput:  # pragma: no cover
        raise NotImplementedError


def _views(n: int) -> str:
    return f"{n} view{'s' if n != 1 else ''}"


def _check_batch_hook(method: Method, args: tuple, kwargs: dict) -> None:
    method.check_batch(args[0] if args else kwargs["batch"])


def build_method(name: str | MethodConfig, backbone: Backbone, config: dict[str, Any] | MethodConfig | None = None,
                 *, num_train: int = 0) -> Method:
    """Build a registered method from its name and a dict of overrides, or from its typed Config.

    ``build_method(cfg.method, backbone)`` takes a run's method section as it is (``build_run_config`` checked
    it); ``build_method("simclr", backbone, {"temperature": 0.3})`` parses and checks the dict (the same
    checks); ``build_method("simclr", backbone, SimCLRConfig(...))`` checks a Config built by hand.
    """
    from ..registry import METHODS

    if isinstance(name, MethodConfig):
        return name.method_class(backbone, name, num_train=num_train)
    cls = METHODS.get(name)
    if config is None or isinstance(config, dict):
        cfg = from_dict(cls.Config, {k: v for k, v in (config or {}).items() if k != "name"}, prefix="method.")
    elif isinstance(config, MethodConfig) and config.name != name:
        raise ConfigError(f"build_method('{name}'): the config given is method '{config.name}''s")
    else:
        cfg = check_values(config, "method.")
    return cls(backbone, cfg, num_train=num_train)


def register_method(name: str, help: str = ""):
    """Class decorator: registers a Method subclass under ``name``; records the name on the class and on its
    Config (``Config.name``, ``Config.method_class``), giving the method a Config class of its own if it has
    none (a method inheriting its parent's Config gets a subclass of it)."""
    from ..registry import METHODS

    def deco(cls):
        cls.registered_name = name
        conf = cls.Config
        if not (isinstance(conf, type) and issubclass(conf, MethodConfig)):
            raise TypeError(f"method '{name}': Config must be a dataclass subclassing MethodConfig")
        if "name" in vars(conf):  # MethodConfig itself, or another method's Config
            conf = dataclass(type(f"{cls.__name__}Config", (conf,), {"__module__": cls.__module__}))
            cls.Config = conf
        conf.name, conf.method_class = name, cls
        return METHODS.register(name, help=help)(cls)

    return deco


def method_defaults(cls: type[Method]) -> dict[str, Any]:
    return to_plain(cls.Config())
