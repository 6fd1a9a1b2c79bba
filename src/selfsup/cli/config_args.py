"""Turn CLI flags, ``--config`` files and ``--set`` overrides into a validated :class:`RunConfig`.

Precedence, lowest first: dataclass defaults → ``--config`` YAML (a file or a packaged preset name) → named
flags (``--epochs`` ...) → ``--set section.key=value``.
"""
from __future__ import annotations

import argparse
import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import RunConfig, apply_overrides, build_run_config, load_yaml, method_section
from ..errors import ConfigError
from ..registry import METHODS

# flag → (section, key)
FLAG_KEYS = {
    "method": ("method", "name"), "data": ("data", "path"), "image_size": ("data", "image_size"),
    "backbone": ("backbone", "name"), "width": ("backbone", "width"), "cifar_stem": ("backbone", "cifar_stem"),
    "epochs": ("train", "epochs"), "max_steps": ("train", "max_steps"), "batch_size": ("train", "batch_size"),
    "seed": ("train", "seed"), "device": ("train", "device"), "checkpoint_every": ("train", "checkpoint_every"),
    "lr": ("optim", "lr"), "optimizer": ("optim", "name"), "compile": ("train", "compile"),
    "time_limit_min": ("train", "time_limit_min"), "knn_every": ("train", "knn_every"),
    "stop_on_collapse": ("train", "stop_on_collapse"),
}


def preset_names() -> list[str]:
    return sorted(p.stem for p in resources.files("selfsup.configs").iterdir() if p.name.endswith(".yaml"))


def load_config_arg(value: str) -> dict[str, Any]:
    p = Path(value)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return load_yaml(p)
    if value in preset_names():
        return load_yaml(Path(str(resources.files("selfsup.configs") / f"{value}.yaml")))
    raise ConfigError(f"--config '{value}' is neither a YAML file nor a preset; presets: {', '.join(preset_names())}")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file or preset name (see `selfsup list`)")
    p.add_argument("--method", help="method name, e.g. simclr")
    p.add_argument("--data", help="dataset name, .npz file or image folder")
    p.add_argument("--image-size", type=int, help="resize images to this size")
    p.add_argument("--backbone", help="backbone name, e.g. resnet18")
    p.add_argument("--width", type=float, help="backbone width multiplier (0.25 is the CPU size)")
    p.add_argument("--cifar-stem", action="store_true", default=None, help="3x3 stride-1 stem, no max-pool")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--time-limit-min", type=float, help="wall-clock budget in minutes (sizes the schedule)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the method's, scaled by batch/256)")
    p.add_argument("--optimizer", help="sgd, adamw or lars")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the method")
    p.add_argument("--knn-every", type=int, help="online kNN monitor every K epochs")
    p.add_argument("--stop-on-collapse", action="store_true", default=None,
                   help="end the run (keeping its checkpoint) when a collapse monitor crosses its threshold")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set method.temperature=0.2 --set optim.weight_decay=1e-5")


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    raw: dict[str, Any] = dict(base or {})
    if getattr(args, "config", None):
        raw = {**raw, **load_config_arg(args.config)}
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for flag, (section, key) in FLAG_KEYS.items():
        v = getattr(args, flag, None)
        if v is not None:
            _set_flag(raw, section, key, v, flag)
    name, _ = method_section(raw.get("method"))
    fields = [f.name for f in dataclasses.fields(METHODS.get(name).Config)]
    raw = apply_overrides(raw, getattr(args, "set", []) or [], method_fields=fields)
    return build_run_config(raw)


def _set_flag(raw: dict[str, Any], section: str, key: str, value: Any, flag: str) -> None:
    """Put a named flag's value into its section of the raw config (a YAML section that is not a mapping is a
    one-line error naming it, not a crash)."""
    current = raw.get(section)
    if current is None:
        current = raw[section] = {}
    elif isinstance(current, str) and section == "method":  # "method: simclr" shorthand
        current = raw[section] = {"name": current}
    if not isinstance(current, dict):
        raise ConfigError(f"--{flag.replace('_', '-')}: the config's '{section}' section must be a mapping of "
                          f"keys, got {current!r}")
    if section == "method" and key == "name" and current.get("name") not in (None, value):
        current = raw[section] = {}  # another method: the file's method keys do not apply
    current[key] = value
