"""Export a run's backbone so that it loads without selfsup: safetensors, a plain ``.pt`` state dict, a
timm / torchvision folder (``config.json`` + ``model.safetensors``) or ONNX (engine/export_formats.py).

The weights are those of ``method.eval_backbone()`` (the encoder that evaluation measures: the online network,
or the teacher for methods that evaluate their teacher), from the run's newest readable checkpoint. Key names:

- ResNets use torchvision's names (``conv1.weight``, ``layer1.0.bn1.running_mean`` ...), which are also timm's,
  so ``torchvision.models.resnet18()`` loads them with ``strict=True`` once its ``fc`` is replaced by
  ``nn.Identity()`` (there is no classifier: self-supervised training has none). With ``cifar_stem`` also
  replace ``conv1`` by a 3x3 stride-1 convolution and ``maxpool`` by ``nn.Identity()``. Only width 1 matches
  torchvision's layer shapes; other widths export with the same key names and the metadata records the width.
- A backbone declares ``export_key_names`` and ``export_state_dict()`` (:class:`~selfsup.backbones.base.Backbone`):
  the ResNets say "torchvision", the ViT maps its weights to timm's names ("timm"), every other backbone
  exports its ``state_dict()`` ("selfsup"). ``import_state_dict()`` is the inverse (``pretrain --init``).

Metadata (architecture, width, stem, input channels, feature size, image size, normalisation mean/std, method,
step) goes in the safetensors header under the key ``selfsup`` as JSON, in ``FILE.json`` beside a ``.pt``, in
``config.json`` (key ``selfsup``) of the timm folder, and in an ONNX model's ``metadata_props``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..backbones.base import Backbone
from .export_formats import (
    ExportError,
    check_timm_exportable,
    is_export_folder,
    onnx_module,
    read_onnx_metadata,
    write_onnx,
    write_timm_folder,
)
from .run_access import check_writable, load_run_checkpoint, rebuild_method, saved_config

__all__ = ["FORMATS", "ExportError", "export_backbone", "read_export_metadata", "rebuild_method"]

FORMATS = ("safetensors", "pt", "timm", "onnx")
DEFAULT_NAMES = {"safetensors": "backbone.safetensors", "pt": "backbone.pt", "timm": "backbone-timm",
                 "onnx": "backbone.onnx"}


def backbone_weights(backbone: Backbone) -> dict[str, torch.Tensor]:
    """Plain contiguous CPU tensors, one storage each (safetensors refuses shared storage)."""
    sd = backbone.export_state_dict()
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def key_names(backbone: Backbone) -> str:
    return backbone.export_key_names


def export_metadata(ckpt: dict[str, Any], backbone: Backbone) -> dict[str, Any]:
    cfg = saved_config(ckpt, "checkpoint").to_dict()  # resolved: every key present
    info = ckpt.get("data") or {}
    names = key_names(backbone)
    meta = {
        "arch": cfg["backbone"]["name"], "width": cfg["backbone"]["width"],
        "cifar_stem": cfg["backbone"]["cifar_stem"], "in_channels": int(backbone.in_channels),
        "num_features": int(backbone.num_features), "key_names": names,
        "image_size": info.get("image_size"), "mean": info.get("mean"), "std": info.get("std"),
        "method": cfg["method"]["name"], "step": int(ckpt["step"]),
    }
    meta["torchvision_loadable"] = (names == "torchvision" and float(meta["width"]) == 1.0)
    return meta


def export_backbone(run_dir: str | Path, fmt: str = "safetensors", out: str | Path | None = None) -> Path:
    """Write the run's backbone to ``out`` (default ``RUN/backbone.<fmt>``, ``RUN/backbone-timm/`` for the timm
    folder); returns the path."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run directory not found: {run_dir}")
    path = Path(out) if out is not None else run_dir / DEFAULT_NAMES[fmt]
    _check_packages(fmt)
    if fmt == "timm" and path.exists() and not is_export_folder(path):
        raise ExportError(f"cannot write the export {path}: it exists and is not an earlier export folder")
    if not (fmt == "timm" and path.exists()):
        check_writable(path, "the export")
    ckpt_path, ckpt = load_run_checkpoint(run_dir)
    backbone = rebuild_method(ckpt, ckpt_path).eval_backbone()
    meta = export_metadata(ckpt, backbone)
    if fmt == "timm":
        check_timm_exportable(meta)
        return write_timm_folder(path, backbone_weights(backbone), meta)
    if fmt == "onnx":
        return write_onnx(path, backbone, meta)
    return _write_file(path, fmt, backbone_weights(backbone), meta)


def _check_packages(fmt: str) -> None:
    """The optional package a format needs, before any work (one line naming it)."""
    if fmt in ("safetensors", "timm"):
        try:
            import safetensors.torch  # noqa: F401
        except ImportError:
            raise ExportError(f"--format {fmt} needs the safetensors package: pip install 'selfsup[safetensors]'"
                              " (or use --format pt)") from None
    if fmt == "onnx":
        onnx_module()


def _write_file(path: Path, fmt: str, weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(weights, str(tmp), metadata={"selfsup": json.dumps(meta), "format": "pt"})
        else:
            torch.save(weights, tmp)
            (path.parent / f"{path.name}.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot write the export {path}: {e.strerror or e}") from None
    return path


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an export (safetensors header, the ``.json`` beside a ``.pt``, the folder's
    ``config.json``, the ONNX model's ``metadata_props``)."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / "config.json").read_text())["selfsup"]
    if path.suffix == ".onnx":
        return read_onnx_metadata(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["selfsup"])
    return json.loads((path.parent / f"{path.name}.json").read_text())
