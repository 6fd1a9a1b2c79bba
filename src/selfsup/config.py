"""Typed run configuration: dataclasses with defaults, YAML files and ``key=value`` overrides on top.

A run is described by :class:`RunConfig`. Each section is a dataclass whose defaults and valid values
(:func:`~selfsup.config_checks.checked`) live here or, for the method section, next to the method's code: the
run's ``method`` *is* the method's ``Config`` instance (a :class:`MethodConfig`; ``cfg.method.name`` is its
registered name). :func:`build_run_config` is the one door: unknown keys, badly typed values and values out of
range raise :class:`ConfigError` with a one-line message that names the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin

import yaml

from .config_checks import COUNT_CAP, IMAGE_CAP, SEED_CAP, VIEWS_CAP, WIDTH_CAP, check_values, checked
from .errors import ConfigError

DEFAULT_METHOD = "simclr"
# train.requeue_signal: the signal that asks for a checkpoint and a requeue (engine/signals.py); none: not handled
REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2", "none")


@dataclass
class DataConfig:
    # a registered dataset name, a .npz file, or an image folder
    path: str = checked("mnist5k", nonempty=True, hint="a dataset name, a .npz file or an image folder")
    # None: the dataset's native size (folders need one; default 64)
    image_size: int | None = checked(None, ge=1, cap=IMAGE_CAP)
    test_path: str | None = None  # labelled evaluation data for folders without a test split
    workers: int = checked(0, ge=0, cap=256)  # DataLoader workers for image folders; in-memory data never uses workers
    # image folders: pretraining crops come from the whole image (short side image_size x full_image_scale, up
    # to a 4:3 canvas) instead of the centred square; evaluation keeps the square (data/canvas.py)
    full_image: bool = False
    full_image_scale: float = checked(1.0, ge=1, le=4)
    # CUDA: in-memory training data is copied to the GPU once when it takes <= 1/4 of its free memory (engine/feed.py)
    device_cache: bool = True
    # shard folders: where JPEGs are decoded for training: in the DataLoader workers, or on the training device
    # (torchvision.io.decode_jpeg, batched; data/device_decode.py); auto: on the device when it is a GPU
    decode: str = checked("auto", choices=("auto", "workers", "device"))


@dataclass
class BackboneConfig:
    name: str = checked("resnet18", nonempty=True)
    width: float = checked(1.0, gt=0, cap=WIDTH_CAP)
    cifar_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for images <= 64 px
    # ViTs: None → 4 for images <= 32 px, 8 for <= 64 px, 16 above
    patch_size: int | None = checked(None, ge=1, cap=IMAGE_CAP)
    # ViTs: register tokens after CLS (Darcet et al. 2024), dropped from every output; 0: none
    registers: int = checked(0, ge=0, cap=256)
    # start from these weights (pretrain only; a resume keeps its checkpoint's): a torchvision or timm state
    # dict (.pth/.pt), a .safetensors file or a `selfsup export`; engine/init_weights.py
    init: str | None = checked(None, nonempty=True, hint="a .pth/.pt/.safetensors state dict or a selfsup export")


@dataclass
class AugmentConfig:
    """View pipeline. ``preset`` None takes the method's default; any field left None takes the preset's value."""

    preset: str | None = None
    # view resolution; None: the image size (smaller views train faster, eval stays full size)
    size: int | None = checked(None, ge=1, cap=IMAGE_CAP)
    crop_scale_min: float | None = checked(None, gt=0, le=1)
    crop_scale_max: float | None = checked(None, gt=0, le=1)
    # s in SimCLR: (0.8s, 0.8s, 0.8s, 0.2s); hue 0.2s <= 0.5
    jitter_strength: float | None = checked(None, ge=0, le=2.5)
    jitter_p: float | None = checked(None, ge=0, le=1)
    grayscale_p: float | None = checked(None, ge=0, le=1)
    blur_p: float | None = checked(None, ge=0, le=1)  # "blur off for images <= 32 px" is the preset default
    solarize_p: float | None = checked(None, ge=0, le=1)
    flip_p: float | None = checked(None, ge=0, le=1)
    n_views: int | None = checked(None, ge=1, cap=VIEWS_CAP)
    local_crops: int | None = checked(None, ge=0, cap=VIEWS_CAP)  # multi-crop: number of small crops
    local_size: int | None = checked(None, ge=1, cap=IMAGE_CAP)
    local_scale_max: float | None = checked(None, gt=0, le=1)

    def validate(self) -> None:
        lo, hi = self.crop_scale_min, self.crop_scale_max
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"augment.crop_scale_min ({lo}) must be <= augment.crop_scale_max ({hi})")


@dataclass
class OptimConfig:
    name: str | None = None  # sgd | adamw | lars; None: the method's default
    lr: float | None = checked(None, gt=0)  # None: the method's base lr scaled by batch_size / 256
    weight_decay: float | None = checked(None, ge=0)  # None: the method's default
    momentum: float = checked(0.9, ge=0, lt=1)
    betas: tuple[float, float] = checked((0.9, 0.999), ge=0, lt=1)
    warmup_epochs: float = checked(1.0, ge=0, cap=COUNT_CAP)
    min_lr_ratio: float = checked(0.0, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    exclude_norm_bias: bool = True  # no weight decay (and no LARS adaptation) on norms and biases
    fused: bool | None = None  # None: fused kernels where torch has them for the device


@dataclass
class TrainConfig:
    epochs: int = checked(10, ge=1, cap=COUNT_CAP)
    # stop early after this many steps (the schedule still spans `epochs`)
    max_steps: int | None = checked(None, ge=1, cap=COUNT_CAP)
    # wall-clock budget: the schedule is sized by a throughput estimate
    time_limit_min: float | None = checked(None, gt=0)
    # the global batch; None: the method's default_batch_size (256 for all but EMP-SSL, 100 as in its paper)
    batch_size: int | None = checked(None, ge=2, cap=COUNT_CAP)
    seed: int = checked(0, ge=0, lt=SEED_CAP)
    device: str = checked("auto", pattern=r"auto|cpu|mps|xpu|cuda(:\d+)?", hint="auto, cpu, cuda, cuda:N or mps")
    # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    precision: str = checked("auto", choices=("auto", "fp32", "bf16"))
    channels_last: bool | None = None  # None: on for ResNets
    compile: bool = False
    grad_clip: float | None = checked(None, gt=0)
    log_every: int = checked(10, ge=1, cap=COUNT_CAP)
    # in steps; a checkpoint is always written at the end
    checkpoint_every: int | None = checked(None, ge=0, cap=COUNT_CAP)
    keep_checkpoints: int = checked(2, ge=0, cap=COUNT_CAP)  # the newest K stay (0: all, e.g. to probe along a run)
    knn_every: int = checked(0, ge=0, cap=COUNT_CAP)  # online kNN monitor every K epochs (0: off); needs labels
    nan_policy: str = checked("stop", choices=("stop", "skip"))
    stop_on_collapse: bool = False  # end the run when a collapse monitor crosses its threshold (engine/monitors.py)
    # split each batch into this many forward/backward passes (no extra negatives)
    grad_accum_steps: int = checked(1, ge=1, cap=COUNT_CAP)
    sync_bn: bool | None = None  # torchrun: synchronised BatchNorm; None = the method's needs_sync_bn
    # torchrun: timeout of every collective (a dead rank ends the run, no hang)
    dist_timeout_min: float = checked(5.0, gt=0)
    # clusters: on this signal, checkpoint at the step boundary and exit with code 3 for a requeue (none: off;
    # docs/distributed.md "Clusters: preemption and restarts")
    requeue_signal: str = checked("SIGUSR1", choices=REQUEUE_SIGNALS)
    # torchrun: shard parameters, gradients and optimizer state over the ranks (FSDP2, per transformer block);
    # one process: nothing to shard (a logged note). docs/distributed.md
    fsdp: bool = False
    # recompute each ViT block's activations in backward instead of keeping them (memory for compute)
    activation_checkpointing: bool = False

    def validate(self) -> None:
        if self.fsdp and self.knn_every:
            raise ConfigError("train.fsdp: the online kNN monitor (train.knn_every) runs the backbone on rank 0 "
                              "alone, which sharded weights cannot do; set train.knn_every=0 and evaluate the "
                              "checkpoint after (selfsup eval), or train.fsdp=false")


@dataclass
class MethodConfig:
    """Base of every method's ``Config``: its fields are the ``method`` section of a run.

    ``name`` is the method's registered name and ``method_class`` its :class:`~selfsup.methods.base.Method`
    subclass; ``register_method`` sets both on the method's Config class, so ``cfg.method.name`` and
    ``cfg.method.method_class`` need no registry lookup. Subclasses declare their fields with
    :func:`~selfsup.config_checks.checked` ranges and defaults next to the method's code.
    """

    name: ClassVar[str] = ""
    method_class: ClassVar[Any] = None

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., key: value, ...}``: the ``method`` section as config.yaml holds it."""
        return {"name": self.name, **{f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}


def default_method() -> MethodConfig:
    """The default ``method`` section: SimCLR's Config with its defaults."""
    from .registry import METHODS

    return METHODS.get(DEFAULT_METHOD).Config()


@dataclass
class RunConfig:
    method: MethodConfig = field(default_factory=default_method)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))


def to_plain(obj: Any) -> Any:
    """Dataclasses → dicts, tuples → lists: something YAML, JSON and ``weights_only`` loads all accept."""
    if isinstance(obj, MethodConfig):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where it is unambiguous (int → float, str → bool)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"bad value for '{key}': {value!r}")
    if tp is Any:
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"'{key}' must have {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return origin(_coerce(v, inner, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"'{key}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"'{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"'{key}' must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{key}' must be a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and coercing values to the field types."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping of keys, got {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = prefix.rstrip(".") or "config"
        raise ConfigError(
            f"unknown key {prefix + str(unknown[0])!r} in {where}; valid keys: {', '.join(names)}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        v = data[f.name]
        if isinstance(tp, type) and isinstance(v, tp):
            kwargs[f.name] = v  # a section built (and checked) already: the run's method Config
        elif dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(typing.cast(type, tp), v, prefix=f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(v, tp, prefix + f.name)
    return check_values(cls(**kwargs), prefix)


def parse_value(text: str) -> Any:
    """YAML scalar parsing for ``--set key=value`` (so ``1e-3``, ``true``, ``null`` and lists work)."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string; accept it as a number.
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            return v
    return v


def apply_overrides(raw: dict[str, Any], overrides: list[str], method_fields: list[str] | None = None) -> dict:
    """Apply ``section.key=value`` strings to a raw config mapping.

    A key without a section (``temperature=0.2``) goes to the method section when the method has that field.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, _, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if parts[0] not in SECTIONS:
            if len(parts) == 1 and method_fields is not None and key in method_fields:
                parts = ["method", key]
            else:
                raise ConfigError(
                    f"unknown config key {key!r} in --set; sections: {', '.join(SECTIONS)}"
                    + (f"; method keys: {', '.join(method_fields)}" if method_fields else "")
                )
        if len(parts) != 2:
            raise ConfigError(f"--set key must be section.key, got {key!r}")
        section = out.get(parts[0])
        if section is None:  # absent, or an empty YAML section
            section = out[parts[0]] = {}
        if isinstance(section, str) and parts[0] == "method":  # "method: simclr" shorthand
            section = out["method"] = {"name": section}
        if not isinstance(section, dict):
            raise ConfigError(f"cannot set {key!r}: '{parts[0]}' is {section!r}, not a mapping")
        section[parts[1]] = parse_value(text)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    return data


def method_section(value: Any) -> tuple[str, dict[str, Any]]:
    """The ``method`` section of a raw config as (registered name, its other keys).

    Absent (None): the default method. A string is the name (``method: byol``); a mapping may name it with
    ``name``. Anything else is a one-line :class:`ConfigError`.
    """
    if value is None:
        return DEFAULT_METHOD, {}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"'method' must be a method name or a mapping of its keys, got {value!r}")
    name = value.get("name", DEFAULT_METHOD)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"'method.name' must be a method name (see `selfsup list`), got {name!r}")
    return name, {k: v for k, v in value.items() if k != "name"}


def build_method_config(value: Any) -> MethodConfig:
    """The typed, checked Config of a raw ``method`` section (see :func:`method_section`)."""
    from .registry import METHODS

    name, keys = method_section(value)
    return from_dict(METHODS.get(name).Config, keys, prefix="method.")


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    """The config door: a raw mapping (YAML, flags, ``--set``, a checkpoint's ``config``) → a checked
    :class:`RunConfig` whose ``method`` is the method's own typed Config.

    Every entry point (CLI, Python API, studies, benchmarks, evaluation of a saved run) builds its config here:
    keys and types are checked by :func:`from_dict`, value ranges by
    :func:`~selfsup.config_checks.check_values`, each section once, as it is built.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {raw!r}")
    raw = dict(raw)
    raw["method"] = build_method_config(raw.get("method"))
    return from_dict(RunConfig, raw)
