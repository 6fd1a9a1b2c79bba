"""Turn CLI flags, ``--config`` files and ``--set`` overrides into a validated :class:`RunConfig`.

Precedence, lowest first: dataclass defaults → ``--config`` YAML (a file or a packaged preset name) → named
flags (``--epochs`` ...) → ``--set section.key=value``.
"""
from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import RunConfig, apply_overrides, build_run_config, load_yaml, method_section
from ..errors import ConfigError
from ..progress import phase
from ..registry import METHODS, UnknownNameError

# flag → (section, key)
FLAG_KEYS = {
    "method": ("method", "name"), "data": ("data", "path"), "image_size": ("data", "image_size"),
    "backbone": ("backbone", "name"), "width": ("backbone", "width"), "cifar_stem": ("backbone", "cifar_stem"),
    "epochs": ("train", "epochs"), "max_steps": ("train", "max_steps"), "batch_size": ("train", "batch_size"),
    "seed": ("train", "seed"), "device": ("train", "device"), "checkpoint_every": ("train", "checkpoint_every"),
    "lr": ("optim", "lr"), "optimizer": ("optim", "name"), "compile": ("train", "compile"),
    "time_limit_min": ("train", "time_limit_min"), "knn_every": ("train", "knn_every"),
    "stop_on_collapse": ("train", "stop_on_collapse"), "init": ("backbone", "init"),
}


def preset_names() -> list[str]:
    return sorted(Path(p.name).stem for p in resources.files("selfsup.configs").iterdir() if p.name.endswith(".yaml"))


def load_config_arg(value: str) -> dict[str, Any]:
    p = Path(value)
    if p.is_dir():
        raise ConfigError(f"--config {p} is a directory, not a YAML file")
    if p.suffix in (".yaml", ".yml") or p.exists():
        try:
            return load_yaml(p)
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); a config file is UTF-8 YAML") from None
        except RecursionError:
            raise ConfigError(f"{p}: nested too deeply to be a config") from None
    if value in preset_names():
        return load_yaml(Path(str(resources.files("selfsup.configs") / f"{value}.yaml")))
    raise ConfigError(f"--config '{value}' is neither a YAML file nor a preset; presets: {', '.join(preset_names())}")


def _set_flag(raw: dict[str, Any], section: str, key: str, value: Any, where: str) -> None:
    """Put a named flag's value into its section of the raw config (an empty YAML section takes it; one that is
    not a mapping is a one-line error naming it, not a crash)."""
    if raw.get(section) is None:
        raw[section] = {}
    elif section == "method" and isinstance(raw[section], str):  # "method: simclr" shorthand
        raw[section] = {"name": raw[section]}
    if not isinstance(raw[section], dict):
        shown = repr(raw[section])
        raise ConfigError(f"{where}the config's '{section}' section must be a mapping of keys, got "
                          f"{shown if len(shown) <= 60 else shown[:57] + '...'}")
    if section == "method" and key == "name" and raw[section].get("name") not in (None, value):
        raw[section] = {}  # another method: the file's method keys do not apply
    raw[section][key] = value


def _check_section(raw: dict[str, Any], section: str, where: str) -> None:
    if not isinstance(raw[section], dict):
        shown = repr(raw[section])
        raise ConfigError(f"{where}section '{section}' must be a mapping of keys, got "
                          f"{shown if len(shown) <= 60 else shown[:57] + '...'}")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file or preset name (see `selfsup list`)")
    p.add_argument("--method", help="method name, e.g. simclr")
    p.add_argument("--data", help="dataset name, .npz file or image folder")
    p.add_argument("--image-size", type=int, help="resize images to this size")
    p.add_argument("--backbone", help="backbone name, e.g. resnet18")
    p.add_argument("--width", type=float, help="backbone width multiplier (0.25 is the CPU size)")
    p.add_argument("--cifar-stem", action="store_true", default=None, help="3x3 stride-1 stem, no max-pool")
    p.add_argument("--init", metavar="FILE",
                   help="start the backbone from these weights: a torchvision/timm state dict (.pth/.pt), a "
                        ".safetensors file or a selfsup export (classifier dropped; unmatched keys reported)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many steps")
    p.add_argument("--time-limit-min", type=float, help="wall-clock budget in minutes (sizes the schedule)")
    p.add_argument("--batch-size", type=int, help="global batch (default: the method's, 256 or EMP-SSL's 100; "
                   "on a CPU with no size given, the cpu-folder preset's)")
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


# the keys that size a run: when none is given (no --config either) and the run trains on a CPU, `pretrain`
# takes them from the cpu-folder preset
SIZE_KEYS = (("backbone", "name"), ("backbone", "width"), ("backbone", "cifar_stem"), ("data", "image_size"),
             ("train", "batch_size"), ("augment", "size"))
CPU_PRESET = "cpu-folder"


def _given(raw: dict[str, Any], section: str, key: str) -> bool:
    sec = raw.get(section)
    return isinstance(sec, dict) and sec.get(key) is not None


def cpu_sized(raw: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``raw`` with the cpu-folder preset's sizes when it gives none and its device is a CPU, and the line that
    says so (None when nothing was chosen). The image size is only set for image folders (a dataset or ``.npz``
    keeps its native size)."""
    from ..engine.build import resolve_device

    if any(_given(raw, s, k) for s, k in SIZE_KEYS):
        return raw, None
    train: dict[str, Any] = raw["train"] if isinstance(raw.get("train"), dict) else {}
    try:
        if resolve_device(str(train.get("device") or "auto")).type != "cpu":
            return raw, None
    except Exception:  # a bad device string: the config door names it
        return raw, None
    preset = load_config_arg(CPU_PRESET)
    data: dict[str, Any] = raw["data"] if isinstance(raw.get("data"), dict) else {}
    backbone: dict[str, Any] = raw["backbone"] if isinstance(raw.get("backbone"), dict) else {}
    folder = Path(str(data.get("path") or "")).is_dir()
    out = {**raw, "backbone": {**backbone, **preset["backbone"]},
           "train": {**train, "batch_size": preset["train"]["batch_size"]}}
    if folder:
        out["data"] = {**data, "image_size": preset["data"]["image_size"]}
    b = preset["backbone"]
    size = f"{preset['data']['image_size']} px, " if folder else ""
    return out, (f"no size given on a CPU: using the {CPU_PRESET} sizes ({b['name']} width {b['width']}, CIFAR stem, "
                 f"{size}batch {preset['train']['batch_size']}); give --width, --image-size, --batch-size or "
                 "--config to choose others")


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None, *,
                     cpu_defaults: bool = False) -> RunConfig:
    """The run config of ``args``. ``cpu_defaults``: a run that gives no size and trains on a CPU takes the
    cpu-folder preset's (:func:`cpu_sized`), and says so on stdout."""
    raw: dict[str, Any] = dict(base or {})
    from_file: dict[str, Any] | None = None
    if getattr(args, "config", None):
        from_file = load_config_arg(args.config)
        raw = {**raw, **from_file}
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    where = f"{args.config}: " if getattr(args, "config", None) else ""
    for flag, (section, key) in FLAG_KEYS.items():
        v = getattr(args, flag, None)
        if v is not None:
            _set_flag(raw, section, key, v, f"{where}--{flag.replace('_', '-')}: ")
    try:
        name, _ = method_section(raw.get("method"))
        cls = METHODS.get(name)
    except (ConfigError, UnknownNameError) as e:
        if from_file is not None and getattr(args, "method", None) is None:
            raise type(e)(f"{where}{e}") from None  # the method came from the file
        raise
    fields = list(getattr(cls.Config, "__dataclass_fields__", {}))
    raw = apply_overrides(raw, getattr(args, "set", []) or [], method_fields=fields)
    if cpu_defaults and from_file is None:
        raw, chosen = cpu_sized(raw)
        if chosen:
            phase(chosen, bool(getattr(args, "quiet", False)))
    try:
        return build_run_config(raw)
    except (ConfigError, UnknownNameError) as e:
        if from_file is not None and _same_error(from_file, str(e)):
            raise type(e)(f"{where}{e}") from None  # the file alone has it: say which file
        raise


def _same_error(file_raw: dict[str, Any], message: str) -> bool:
    """Whether the config file on its own (flags and --set aside) fails with ``message``."""
    try:
        build_run_config(file_raw)
    except (ConfigError, UnknownNameError) as e:
        return str(e) == message
    except Exception:
        return False
    return False
