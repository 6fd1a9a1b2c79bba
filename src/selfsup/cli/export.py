"""``selfsup export RUN --format safetensors|pt [--out FILE]``: the backbone's weights, loadable without selfsup."""
from __future__ import annotations

import argparse

FORMATS = ("safetensors", "pt")  # engine.export.FORMATS, without importing torch for --help


def cmd_export(args: argparse.Namespace) -> int:
    from ..engine.export import export_backbone, read_export_metadata

    path = export_backbone(args.run, args.format, args.out)
    meta = read_export_metadata(path)
    note = ("loads into torchvision.models." + meta["arch"] + " (fc = nn.Identity()" +
            (", 3x3 stride-1 conv1, maxpool = nn.Identity()" if meta["cifar_stem"] else "") + ")"
            if meta["torchvision_loadable"] else f"key names: {meta['key_names']}, width {meta['width']}")
    print(f"exported {meta['arch']} backbone ({meta['num_features']} features, step {meta['step']}) → {path}; {note}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    ex = sub.add_parser("export", help="export a run's backbone weights (torchvision key names for ResNets)")
    ex.add_argument("run", help="run directory")
    ex.add_argument("--format", default="safetensors", choices=FORMATS)
    ex.add_argument("--out", help="output file (default: RUN/backbone.<format>)")
    ex.set_defaults(fn=cmd_export)
    return ex
