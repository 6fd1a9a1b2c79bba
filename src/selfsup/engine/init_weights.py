"""Starting a run from pretrained weights (``backbone.init``): continue self-supervised training on your own
images from, say, ImageNet weights you already have on disk.

The file is one of

- a torchvision or timm state dict (``.pth`` / ``.pt`` / ``.bin``: ``torch.save(model.state_dict(), ...)``),
  read with ``torch.load(weights_only=True)`` (:func:`selfsup.checkpoints.load_checkpoint`: a pickle that would
  run code is refused with one line);
- a ``.safetensors`` file (timm's ``model.safetensors``, or ``selfsup export``'s default);
- one of our exports (``selfsup export RUN``: safetensors, ``.pt`` with its ``.json``, or the ``--format timm``
  folder), whose recorded architecture must be this run's.

Key names are mapped by the backbone (:meth:`~selfsup.backbones.base.Backbone.import_state_dict`, the inverse of
the names ``selfsup export`` writes: torchvision's for the ResNets, which are also timm's ResNet names; timm's for
the ViT). A training checkpoint's ``state_dict`` / ``model`` entry and DistributedDataParallel's ``module.``
prefix are unwrapped; a classifier (``fc.*``, ``head.*``) is dropped. A tensor whose shape differs from the
backbone's is refused with one line naming the key and both shapes; every other unmatched key is reported
(:class:`InitReport`): weights the file lacks keep their random initialisation, weights the backbone lacks are
ignored. Applied only when a run starts: a resumed run continues from its checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..backbones.base import Backbone
from ..checkpoints import load_checkpoint
from ..errors import CheckpointError, ConfigError

CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")  # torchvision / timm classifier heads: dropped
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")  # training checkpoints that hold a state dict
SHOWN = 6  # names listed in the one-line summary (the run's init.json lists all)


@dataclass
class InitReport:
    """What ``backbone.init`` loaded: the file, the tensors loaded, and every key that did not match."""

    path: str
    loaded: int
    missing: list[str] = field(default_factory=list)  # the backbone's, absent from the file: random init kept
    unexpected: list[str] = field(default_factory=list)  # the file's, not in the backbone: ignored
    dropped: list[str] = field(default_factory=list)  # the file's classifier

    def summary(self) -> str:
        parts = [f"backbone.init: loaded {self.loaded} tensors from {self.path}"]
        if self.dropped:
            parts.append(f"classifier dropped ({_names(self.dropped)})")
        parts.append(f"missing, left at random init: {_names(self.missing) if self.missing else 'none'}")
        parts.append(f"unexpected, ignored: {_names(self.unexpected) if self.unexpected else 'none'}")
        return "; ".join(parts)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "loaded": self.loaded, "missing": self.missing, "unexpected": self.unexpected,
                "dropped": self.dropped}


def _names(keys: list[str]) -> str:
    more = f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def check_init_file(path: str | None) -> None:
    """A one-line error before anything is written when ``backbone.init`` names no file."""
    if path is not None and not Path(path).exists():
        raise ConfigError(f"backbone.init: file not found: {path}")


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The file's tensors by name and, for one of our exports, its metadata (None otherwise)."""
    p = Path(path)
    if p.is_dir():  # the --format timm folder
        if not (p / "model.safetensors").is_file():
            raise ConfigError(f"backbone.init: {p} is a directory without model.safetensors")
        meta = _folder_meta(p)
        return read_weights(p / "model.safetensors")[0], meta
    if not p.is_file():
        raise ConfigError(f"backbone.init: file not found: {p}")
    if p.suffix == ".safetensors":
        return _read_safetensors(p)
    obj = load_checkpoint(p)  # weights_only=True: pickled code is refused with one line naming the file
    meta_file = p.parent / f"{p.name}.json"
    meta = _json_or_none(meta_file)
    return _state_dict_of(obj, p), meta


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise ConfigError(f"backbone.init: {p} is a safetensors file; reading it needs the safetensors package: "
                          "pip install 'selfsup[safetensors]'") from None
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a header that does not parse, a file cut short, not safetensors at all
        raise CheckpointError(f"{p}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    meta = None
    if "selfsup" in header:
        try:
            meta = json.loads(header["selfsup"])
        except ValueError:
            meta = None
    return weights, meta if isinstance(meta, dict) else None


def _folder_meta(folder: Path) -> dict[str, Any] | None:
    cfg = _json_or_none(folder / "config.json")
    meta = cfg.get("selfsup") if isinstance(cfg, dict) else None
    return meta if isinstance(meta, dict) else None


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _state_dict_of(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    """The mapping of names to tensors inside ``obj`` (a state dict, or a checkpoint holding one)."""
    if isinstance(obj, dict) and "method" in obj and "config" in obj and "step" in obj:
        raise ConfigError(f"backbone.init: {p} is a selfsup run checkpoint, not a state dict; export its "
                          "backbone first (selfsup export RUN) and pass that file")
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise ConfigError(f"backbone.init: {p} is not a state dict (a mapping of parameter names to tensors); "
                          f"it holds {_kind(obj)}")
    if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def _kind(obj: Any) -> str:
    if isinstance(obj, dict):
        bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
        return "an empty mapping" if not obj else f"a mapping whose entry {str(bad)[:40]!r} is not a tensor"
    return f"a {type(obj).__name__}"


def check_architecture(meta: dict[str, Any] | None, arch: str, path: str) -> None:
    """One of our exports records its backbone: it must be this run's."""
    if meta is None or meta.get("arch") in (None, arch):
        return
    raise ConfigError(f"backbone.init: {path} is an export of a {meta['arch']} backbone, but this run's backbone "
                      f"is {arch}; set backbone.name={meta['arch']} or pass weights of a {arch}")


def load_init_weights(backbone: Backbone, path: str, arch: str) -> InitReport:
    """Load ``path`` into ``backbone`` (in place) and return what matched; see the module docstring."""
    weights, meta = read_weights(path)
    check_architecture(meta, arch, path)
    own = backbone.state_dict()
    mapped = backbone.import_state_dict(weights)
    dropped = [k for k in mapped if k.startswith(CLASSIFIER_PREFIXES) and k not in own]
    for k in dropped:
        del mapped[k]
    for k, v in mapped.items():
        if k in own and tuple(v.shape) != tuple(own[k].shape):
            raise ConfigError(f"backbone.init: {path}: {k} has shape {tuple(v.shape)} in the file but "
                              f"{tuple(own[k].shape)} in this {arch} (backbone.width, backbone.cifar_stem and the "
                              "data's channels must match the file's)")
    matched = {k: v for k, v in mapped.items() if k in own}
    if not matched:
        sample = ", ".join(list(mapped)[:3]) or "none"
        raise ConfigError(f"backbone.init: {path}: none of its {len(mapped)} tensors matches a {arch} weight name "
                          f"(its keys: {sample}...); is it weights of another architecture?")
    for k, v in matched.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ConfigError(f"backbone.init: {path}: {k} holds NaN or infinite values")
    with torch.no_grad():
        for k, v in matched.items():
            own[k].copy_(v.to(own[k].dtype))  # state_dict tensors share storage with the parameters
    missing = [k for k in own if k not in matched]
    unexpected = [k for k in mapped if k not in own]
    return InitReport(str(path), len(matched), missing, unexpected, dropped)
