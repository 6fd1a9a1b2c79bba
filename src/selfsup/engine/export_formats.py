"""Export formats other libraries load: a timm / torchvision folder and ONNX (``selfsup export --format ...``).

- ``timm``: a folder with ``model.safetensors`` (torchvision's key names, which are also timm's ResNet names; no
  classifier) and ``config.json`` (timm's layout: ``architecture``, ``num_features``, ``pretrained_cfg`` with
  the input size and normalisation, plus the stem and our metadata under ``selfsup``).
  ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=".../model.safetensors"),
  num_classes=0)`` loads it for an ImageNet-stem run of width 1, and so does a plain
  ``torchvision.models.resnet18()`` with ``fc = nn.Identity()``. A CIFAR-stem run (3x3 stride-1 ``conv1``, no
  max-pool) says so in ``config.json``: timm's and torchvision's ResNets have the ImageNet stem (7x7 stride-2
  ``conv1`` and a max-pool), so replace both before loading (docs/practitioner.md shows how).
- ``onnx``: the backbone traced by ``torch.onnx.export`` (input ``images`` (B, C, H, W) normalised as the run's
  data, output ``features`` (B, num_features); the batch axis is dynamic), our metadata in the model's
  ``metadata_props`` under ``selfsup``. Needs the ``onnx`` package (``pip install 'selfsup[onnx]'``).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ..backbones.base import Backbone
from .rundir import RunDirError

TIMM_ARCHS = ("resnet18", "resnet34", "resnet50")  # our names are timm's and torchvision's for these
CIFAR_STEM = ("cifar: conv1 is a 3x3 stride-1 convolution and there is no max-pool; timm's and torchvision's "
              "ResNets have the ImageNet stem, so replace conv1 by Conv2d(in_chans, 64, 3, 1, 1, bias=False) and "
              "maxpool by Identity() before loading")
IMAGENET_STEM = "imagenet: conv1 is a 7x7 stride-2 convolution followed by a 3x3 max-pool, as in timm and torchvision"


class ExportError(RunDirError):
    """The run cannot be exported as asked (unknown format, missing optional package); the message says why."""


def stem_note(meta: dict[str, Any]) -> str:
    return CIFAR_STEM if meta["cifar_stem"] else IMAGENET_STEM


def timm_config(meta: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` of the timm folder: timm's keys, the stem in words, and our metadata."""
    size = list(meta["image_size"] or [])
    return {
        "architecture": meta["arch"], "num_classes": 0, "num_features": meta["num_features"],
        "global_pool": "avg", "in_chans": meta["in_channels"],
        "pretrained_cfg": {"tag": "selfsup", "input_size": [meta["in_channels"], *size], "fixed_input_size": False,
                           "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center", "mean": meta["mean"],
                           "std": meta["std"], "num_classes": 0, "first_conv": "conv1", "classifier": "fc"},
        "stem": stem_note(meta),
        "timm_loadable": bool(meta["torchvision_loadable"]) and not meta["cifar_stem"],
        "selfsup": meta,
    }


def check_timm_exportable(meta: dict[str, Any]) -> None:
    if meta["key_names"] != "torchvision" or meta["arch"] not in TIMM_ARCHS:
        raise ExportError(f"--format timm needs a ResNet backbone ({', '.join(TIMM_ARCHS)}: torchvision's and timm's "
                          f"key names); this run's backbone is {meta['arch']}: use --format safetensors, pt or onnx")


def is_export_folder(path: Path) -> bool:
    try:
        return path.is_dir() and "selfsup" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def write_timm_folder(path: Path, weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """``path/model.safetensors`` + ``path/config.json``, written beside and renamed into place (an earlier
    export folder at ``path`` is replaced; anything else there is refused by the caller)."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"selfsup": json.dumps(meta), "format": "pt"})
        (tmp / "config.json").write_text(json.dumps(timm_config(meta), indent=2) + "\n", encoding="utf-8")
        if is_export_folder(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"cannot write the export {path}: {e.strerror or e}") from None
    return path


def onnx_module() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError("--format onnx needs the onnx package, which is not installed: pip install "
                          "'selfsup[onnx]' (or pip install onnx)") from None
    return onnx


def write_onnx(path: Path, backbone: Backbone, meta: dict[str, Any]) -> Path:
    """Trace ``backbone`` to ONNX at the run's image size (dynamic batch), with our metadata in the file."""
    onnx = onnx_module()
    size = list(meta["image_size"] or [32, 32])
    x = torch.zeros(2, int(meta["in_channels"]), *[int(s) for s in size])
    model = backbone.to("cpu").to(memory_format=torch.contiguous_format).eval()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes (tracer, deprecation) are not the user's
            torch.onnx.export(model, (x,), str(tmp), input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, dynamo=False)
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = "selfsup", json.dumps(meta)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot write the export {path}: {e.strerror or e}") from None
    except Exception as e:  # an operator the exporter does not support
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot export the {meta['arch']} backbone to ONNX: {str(e).splitlines()[0][:200]}") from None
    return path


def read_onnx_metadata(path: Path) -> dict[str, Any]:
    proto = onnx_module().load(str(path), load_external_data=False)
    return json.loads(next(p.value for p in proto.metadata_props if p.key == "selfsup"))
