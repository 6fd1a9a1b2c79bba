"""Typed run configuration: dataclasses with defaults, YAML files and ``key=value`` overrides on top.

A run is described by :class:`RunConfig`. Each section is a dataclass whose defaults live here or, for the
method section, next to the method's code (``Method.Config``). Unknown keys and badly typed values raise
:class:`ConfigError` with a one-line message that names the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    path: str = "mnist5k"  # a registered dataset name, a .npz file, or an image folder
    image_size: int | None = None  # None: the dataset's native size (folders need one; default 64)
    test_path: str | None = None  # labelled evaluation data for folders without a test split
    workers: int = 0  # DataLoader workers for image folders; in-memory data never uses workers


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    width: float = 1.0
    cifar_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for images <= 64 px
    patch_size: int | None = None  # ViTs: None → 4 for images <= 32 px, 8 for <= 64 px, 16 above


@dataclass
class AugmentConfig:
    """View pipeline. ``preset`` None takes the method's default; any field left None takes the preset's value."""

    preset: str | None = None
    size: int | None = None  # view resolution; None: the image size (smaller views train faster, eval stays full size)
    crop_scale_min: float | None = None
    crop_scale_max: float | None = None
    jitter_strength: float | None = None  # s in SimCLR: (0.8s, 0.8s, 0.8s, 0.2s)
    jitter_p: float | None = None
    grayscale_p: float | None = None
    blur_p: float | None = None  # "blur off for images <= 32 px" is the preset default
    solarize_p: float | None = None
    flip_p: float | None = None
    n_views: int | None = None
    local_crops: int | None = None  # multi-crop: number of small crops
    local_size: int | None = None
    local_scale_max: float | None = None


@dataclass
class OptimConfig:
    name: str | None = None  # sgd | adamw | lars; None: the method's default
    lr: float | None = None  # None: the method's base lr scaled by batch_size / 256
    weight_decay: float | None = None  # None: the method's default
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    exclude_norm_bias: bool = True  # no weight decay (and no LARS adaptation) on norms and biases
    fused: bool | None = None  # None: fused kernels where torch has them for the device


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None  # stop early after this many steps (the schedule still spans `epochs`)
    time_limit_min: float | None = None  # wall-clock budget: the schedule is sized by a throughput estimate
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: bool | None = None  # None: on for ResNets
    compile: bool = False
    grad_clip: float | None = None
    log_every: int = 10
    checkpoint_every: int | None = None  # in steps; a checkpoint is always written at the end
    knn_every: int = 0  # online kNN monitor every K epochs (0: off); needs labels
    nan_policy: str = "stop"  # stop | skip
    stop_on_collapse: bool = False  # end the run when a collapse monitor crosses its threshold (engine/monitors.py)
    grad_accum_steps: int = 1  # split each batch into this many forward/backward passes (no extra negatives)
    sync_bn: bool | None = None  # torchrun: synchronised BatchNorm; None = the method's needs_sync_bn
    dist_timeout_min: float = 5.0  # torchrun: timeout of every collective (a dead rank ends the run, no hang)


@dataclass
class RunConfig:
    method: dict[str, Any] = field(default_factory=lambda: {"name": "simclr"})
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
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, v, prefix=f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(v, tp, prefix + f.name)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigError:
            raise
        except ValueError as e:  # validate() may raise a plain ValueError naming the option
            raise ConfigError(str(e)) from None
    return obj


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
        section = out.setdefault(parts[0], {})
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
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    return data


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a raw mapping into a :class:`RunConfig`. The method section is checked against its own Config."""
    from .config_checks import check_run_config
    from .registry import METHODS

    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {raw!r}")
    raw = dict(raw)
    method = raw.pop("method", None) or {"name": "simclr"}
    if isinstance(method, str):
        method = {"name": method}
    if not isinstance(method, dict):
        raise ConfigError(f"'method' must be a method name or a mapping, got {method!r}")
    name = method.get("name", "simclr")
    if not isinstance(name, str):
        raise ConfigError(f"'method.name' must be a string, got {name!r}")
    cls = METHODS.get(name)
    mcfg = from_dict(cls.Config, {k: v for k, v in method.items() if k != "name"}, prefix="method.")
    cfg = from_dict(RunConfig, raw)
    cfg.method = {"name": name, **to_plain(mcfg)}
    return check_run_config(cfg)


def method_config(cfg: RunConfig) -> Any:
    """The typed Config dataclass instance of the run's method."""
    from .registry import METHODS

    cls = METHODS.get(cfg.method["name"])
    return from_dict(cls.Config, {k: v for k, v in cfg.method.items() if k != "name"}, prefix="method.")
