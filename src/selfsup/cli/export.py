"""``selfsup export RUN --format safetensors|pt|timm|onnx [--out PATH]``: the backbone, loadable without selfsup."""
from __future__ import annotations

import argparse

FORMATS = ("safetensors", "pt", "timm", "onnx")  # engine.export.FORMATS, without importing torch for --help


def _note(meta: dict, fmt: str) -> str:
    """Where the export loads, in a few words."""
    stem = ", 3x3 stride-1 conv1, maxpool = nn.Identity()" if meta["cifar_stem"] else ""
    if fmt == "onnx":
        size = "x".join(str(s) for s in meta["image_size"] or [])
        return f"ONNX: input 'images' (B, {meta['in_channels']}, {size}), output 'features'"
    if not meta["torchvision_loadable"]:
        return f"key names: {meta['key_names']}, width {meta['width']}"
    tv = f"loads into torchvision.models.{meta['arch']} (fc = nn.Identity(){stem})"
    if fmt == "timm":
        how = ("replace conv1 and maxpool first: see config.json 'stem'" if meta["cifar_stem"] else
               "pretrained_cfg_overlay=dict(file=.../model.safetensors), num_classes=0")
        return f"timm.create_model('{meta['arch']}', ...) ({how}); {tv}"
    return tv


def cmd_export(args: argparse.Namespace) -> int:
    from ..engine.export import export_backbone, read_export_metadata

    path = export_backbone(args.run, args.format, args.out)
    meta = read_export_metadata(path)
    print(f"exported {meta['arch']} backbone ({meta['num_features']} features, step {meta['step']}) → {path}; "
          f"{_note(meta, args.format)}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    ex = sub.add_parser("export", help="export a run's backbone (safetensors, pt, a timm/torchvision folder, onnx)")
    ex.add_argument("run", help="run directory")
    ex.add_argument("--format", default="safetensors", choices=FORMATS,
                    help="safetensors (default) or pt: the weights, torchvision key names for ResNets; timm: a "
                         "folder with config.json + model.safetensors (timm.create_model or torchvision load it); "
                         "onnx: the traced backbone (needs the onnx package)")
    ex.add_argument("--out", help="output file, or folder for --format timm (default: RUN/backbone.<format>, "
                                  "RUN/backbone-timm)")
    ex.set_defaults(fn=cmd_export)
    return ex
