"""A trained encoder to use: :func:`load_encoder` and :class:`Encoder` (``selfsup.load_encoder``).

``load_encoder(source)`` reads any of

- a run directory (``selfsup pretrain --out``): its newest readable checkpoint, loaded with ``weights_only=True``;
  the encoder is ``method.eval_backbone()``, the network evaluation measures;
- one checkpoint file of a run (``RUN/checkpoints/step-*.pt``);
- an export of ``selfsup export`` (``.safetensors``, or ``.pt`` with its ``.pt.json`` beside it): the backbone is
  rebuilt from the export's metadata and must take every weight (an export whose weights are of another
  architecture, width or stem than its metadata claims is a one-line error naming the file);
- a backbone name (``selfsup list``): random initialisation (``seed``), the baseline every trained encoder
  is measured against.

and returns an :class:`Encoder`: the backbone in eval mode plus its :class:`Preprocessing`, the run's own (image
size, channels, per-channel mean/std of its pretraining data). ``encoder.embed(images)`` takes a uint8 tensor
``(B, C, H, W)`` or a list of PIL images and returns ``(B, D)`` float32 features on the CPU, without gradients,
``batch_size`` images at a time. PIL images (and files read by ``selfsup embed``) are read as folders are read for
pretraining: the centred square crop, resized to the run's size, in its channels; a tensor of another size is
centre-cropped to a square and resized.

Example::

    import selfsup
    enc = selfsup.load_encoder("runs/demo")
    feats = enc.embed(images_uint8)  # (B, enc.num_features)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..augment.pipeline import eval_view
from ..backbones.base import Backbone, build_backbone
from ..checkpoints import check_checkpoint, load_checkpoint, load_run_checkpoint, state_mismatch
from ..data.base import DataError
from ..data.folder import square_array
from ..engine.build import resolve_device
from ..engine.export_formats import is_export_folder
from ..engine.run_access import rebuild_method
from ..errors import CheckpointError, ConfigError, RunDirError
from ..registry import BACKBONES

__all__ = ["Encoder", "Preprocessing", "load_encoder"]

EXPORT_SUFFIXES = (".safetensors", ".pt")


@dataclass(frozen=True)
class Preprocessing:
    """What the encoder's input must be: ``channels`` x ``image_size`` x ``image_size``, scaled to [0, 1] and
    normalised with ``mean``/``std`` (one value per channel)."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Encoder:
    """A backbone in eval mode with its preprocessing; ``info`` says where it came from (``source``, ``kind``:
    run | checkpoint | export | backbone, ``arch``, ``method``, ``step``, ``seed``)."""

    backbone: nn.Module
    preprocessing: Preprocessing
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.backbone.eval().to(self.device)
        p = self.preprocessing
        self._view = eval_view(p.image_size, p.mean, p.std)

    @property
    def num_features(self) -> int:
        return int(getattr(self.backbone, "num_features"))

    def describe(self) -> dict[str, Any]:
        """Where the encoder came from and its preprocessing, as plain JSON data (recorded beside embeddings)."""
        return {**self.info, "num_features": self.num_features, "preprocessing": self.preprocessing.to_dict()}

    def to_tensor(self, images: Any) -> torch.Tensor:
        """``images`` (a uint8 tensor (B, C, H, W), a PIL image or a list of them) as a uint8 (B, C, S, S) batch
        of the encoder's size and channels."""
        p = self.preprocessing
        if not isinstance(images, torch.Tensor):
            items = [images] if hasattr(images, "convert") else list(images)
            if not items or not all(hasattr(im, "convert") for im in items):
                raise DataError("embed() takes a uint8 tensor (B, C, H, W) or a list of PIL images")
            return torch.from_numpy(np.stack([square_array(im, p.image_size, p.channels) for im in items]))
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"embed() takes uint8 images (B, C, H, W) in 0..255, got {images.dtype} "
                            f"{tuple(images.shape)}")
        if images.shape[1] != p.channels:
            raise DataError(f"the images have {images.shape[1]} channels but the encoder takes {p.channels}")
        h, w = images.shape[2:]
        if h != w:  # the centred square, as folders are read
            s = min(h, w)
            images = images[:, :, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        return images

    @torch.no_grad()
    def embed(self, images: Any, *, batch_size: int = 256, normalize: bool = False) -> torch.Tensor:
        """``(B, D)`` float32 features on the CPU; ``normalize`` scales each row to unit L2 norm."""
        x = self.to_tensor(images)
        out = []
        for i in range(0, x.shape[0], max(1, batch_size)):
            v = self._view(x[i:i + batch_size].to(self.device))
            f = self.backbone(v).float()
            out.append((nn.functional.normalize(f, dim=1) if normalize else f).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.num_features)


def load_encoder(source: str | Path, device: str | torch.device = "cpu", *, image_size: int = 32,
                 channels: int = 3, width: float = 1.0, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, seed: int = 0) -> Encoder:
    """The encoder of ``source`` (a run directory, a checkpoint, an export, or a backbone name; see the module
    docstring) on ``device`` ("cpu", "cuda", "auto"). ``image_size``, ``channels``, ``width``, ``mean``, ``std``
    and ``seed`` describe a randomly initialised backbone and apply only when ``source`` is a backbone name
    (mean/std default to 0.5/0.25 per channel); a run or an export records its own."""
    dev = device if isinstance(device, torch.device) else _device(str(device))
    path = Path(source)
    if path.is_dir() and is_export_folder(path):  # `selfsup export --format timm`: its weights carry the metadata
        return _from_export(path / "model.safetensors", dev)
    if path.is_dir():
        ckpt_path, ckpt = load_run_checkpoint(path)
        return _from_checkpoint(ckpt, ckpt_path, dev, kind="run", source=path)
    if path.is_file():
        if path.suffix == ".safetensors" or (path.suffix == ".pt" and _sidecar(path).is_file()):
            return _from_export(path, dev)
        if path.suffix == ".pt":
            ckpt = check_checkpoint(load_checkpoint(path), path)
            return _from_checkpoint(ckpt, path, dev, kind="checkpoint", source=path)
        raise RunDirError(f"{path}: not an encoder (a run directory, a checkpoint .pt, or an export "
                          f"{' / '.join(EXPORT_SUFFIXES)} of `selfsup export`)")
    if str(source) in BACKBONES:
        return _random_init(str(source), dev, image_size, channels, width, mean, std, seed)
    raise RunDirError(f"encoder not found: '{source}' is not a run directory, an export file or a backbone name "
                      f"({', '.join(BACKBONES.names())})")


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ConfigError:
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)") from None
    except RuntimeError as e:
        raise ConfigError(f"--device '{name}' is not a device (auto, cpu, cuda, cuda:N): "
                          f"{str(e).splitlines()[0][:120]}") from None


def _from_checkpoint(ckpt: dict[str, Any], path: Path, dev: torch.device, *, kind: str, source: Path) -> Encoder:
    info = ckpt.get("data") or {}
    if not info.get("mean") or not info.get("std"):
        raise CheckpointError(f"{path}: records no preprocessing (mean/std of its data); it was written by an "
                              "older selfsup: continue the run once with this version to record it")
    backbone = rebuild_method(ckpt, path).eval_backbone()
    pre = Preprocessing(int(info["image_size"][0]), int(info["channels"]), tuple(info["mean"]), tuple(info["std"]))
    cfg = ckpt["config"]
    return Encoder(backbone, pre, dev, {"source": str(source.resolve()), "kind": kind,
                                        "arch": cfg["backbone"].get("name"), "method": cfg["method"]["name"],
                                        "step": int(ckpt["step"])})


def _random_init(name: str, dev: torch.device, image_size: int, channels: int, width: float,
                 mean: Sequence[float] | None, std: Sequence[float] | None, seed: int) -> Encoder:
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    mean = tuple(float(m) for m in (mean if mean is not None else [0.5] * channels))
    std = tuple(float(s) for s in (std if std is not None else [0.25] * channels))
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ConfigError(f"mean and std need {channels} values each (std > 0), got {list(mean)} and {list(std)}")
    with torch.random.fork_rng(devices=[]):  # the same seed gives the same weights; the caller's RNG is untouched
        torch.manual_seed(seed)
        backbone = build_backbone(name, in_channels=channels, width=width, image_size=image_size)
    pre = Preprocessing(int(image_size), channels, mean, std)
    return Encoder(backbone, pre, dev, {"source": name, "kind": "backbone", "arch": name, "width": width,
                                        "seed": seed, "method": None, "step": 0})


def _sidecar(path: Path) -> Path:
    return path.parent / f"{path.name}.json"


def export_metadata(path: Path) -> dict[str, Any]:
    """The ``selfsup export`` metadata of ``path`` (safetensors header, or ``FILE.pt.json``); one line when absent."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get("selfsup")
            if text is None:
                raise CheckpointError(f"{path}: a safetensors file without selfsup's metadata (not written by "
                                      "`selfsup export`); its architecture is unknown")
        else:
            text = _sidecar(path).read_text()
        meta = json.loads(text)
    except ImportError:
        raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package "
                              "(pip install 'selfsup[safetensors]')") from None
    except CheckpointError:
        raise
    except Exception as e:  # a damaged header, a sidecar that is not JSON
        raise CheckpointError(f"{path}: not a readable selfsup export ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    need = ("arch", "width", "cifar_stem", "in_channels", "num_features", "image_size", "mean", "std")
    missing = [k for k in need if not isinstance(meta, dict) or meta.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: its export metadata lacks {', '.join(missing)}")
    return meta


def _export_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    weights = load_checkpoint(path)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: an export holds a mapping of names to tensors, this file does not")
    return weights


def _from_export(path: Path, dev: torch.device) -> Encoder:
    meta = export_metadata(path)
    weights = _export_weights(path)
    arch, width = str(meta["arch"]), float(meta["width"])
    claim = f"{arch} (width {width:g}{', CIFAR stem' if meta['cifar_stem'] else ''})"
    if arch not in BACKBONES:
        raise CheckpointError(f"{path}: its metadata names backbone '{arch}', which this selfsup does not have")
    size = int(meta["image_size"][0])
    patch = weights.get("patch_embed.proj.weight")
    reg = weights.get("reg_token")  # (1, R, D): a ViT built with backbone.registers=R
    try:
        backbone = build_backbone(arch, in_channels=int(meta["in_channels"]), width=width,
                                  cifar_stem=bool(meta["cifar_stem"]), image_size=size,
                                  patch_size=int(patch.shape[-1]) if patch is not None else None,
                                  registers=int(reg.shape[1]) if reg is not None and reg.ndim == 3 else 0)
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"{path}: its metadata does not build a backbone ({e})") from None
    state = _own_names(backbone, weights)
    diff = state_mismatch(backbone, state)
    if diff or backbone.num_features != int(meta["num_features"]):
        raise CheckpointError(f"{path}: its weights are not those of the {claim} its metadata claims "
                              f"({diff or 'feature size differs'})")
    backbone.load_state_dict(state)
    pre = Preprocessing(size, int(meta["in_channels"]), tuple(meta["mean"]), tuple(meta["std"]))
    return Encoder(backbone, pre, dev, {"source": str(path.resolve()), "kind": "export", "arch": arch,
                                        "method": meta.get("method"), "step": meta.get("step")})


def _own_names(backbone: Backbone, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An export's weights under the backbone's own ``state_dict`` names (the inverse of ``export_state_dict``)."""
    if backbone.export_key_names != "timm":  # torchvision names are the ResNets' own; "selfsup" is ours
        return dict(weights)
    own = set(backbone.state_dict())
    out = {}
    for k, v in weights.items():
        if k == "pos_embed":  # timm's (1, T + N, D) with zero CLS (and register) slots; ours: sincos or learned (N)
            if "pos_embed" in own:
                out[k] = v[:, 1 + backbone.num_registers:]
            continue
        out[k.replace("patch_embed.proj.", "patch_embed.").replace(".mlp.fc1.", ".mlp.0.")
             .replace(".mlp.fc2.", ".mlp.2.")] = v
    return out
