"""``selfsup study augmentations|temperature|projection-head``: fixed-budget SimCLR grids → JSON + PNG + Markdown."""
from __future__ import annotations

import argparse


def _settings(args: argparse.Namespace, default_probes: tuple[str, ...]):
    from ..studies.base import StudySettings

    return StudySettings(data=args.data, out=args.out, budget_steps=args.budget_steps, budget_min=args.budget_min,
                         backbone=args.backbone, width=args.width, image_size=args.image_size,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                         eval_train=args.eval_train, eval_test=args.eval_test,
                         probes=tuple(args.probe) if args.probe else default_probes,
                         keep_checkpoints=args.keep_checkpoints, overwrite=args.overwrite, quiet=args.quiet)


def cmd_study(args: argparse.Namespace) -> int:
    if args.study == "augmentations":
        from ..augment.named import canonical_names
        from ..studies.augmentations import AugmentationStudy

        names = [n for n in args.transforms.split(",") if n.strip()] if args.transforms else None
        if names:
            canonical_names(names)  # unknown names fail before any data is loaded
        res = AugmentationStudy(_settings(args, ("knn",))).run(names)
    elif args.study == "temperature":
        from ..studies.temperature import TemperatureStudy

        res = TemperatureStudy(_settings(args, ("knn",))).run(args.temperatures)
    else:
        from ..studies.projection_head import ProjectionHeadStudy

        res = ProjectionHeadStudy(_settings(args, ("knn", "linear"))).run(args.heads)
    print(open(res["files"]["md"]).read(), end="")
    print("written: " + ", ".join(res["files"].values()))
    return 0


def _floats(v: str) -> list[float]:
    return [float(x) for x in v.split(",") if x.strip()]


def add_parser(sub) -> None:
    st = sub.add_parser("study", help="fixed-budget SimCLR studies: augmentation pairs, temperature, projection head")
    ssub = st.add_subparsers(dest="study", required=True)
    helps = {"augmentations": "SimCLR's ablation matrix: kNN top-1 for every pair of transformations",
             "temperature": "NT-Xent temperature sweep",
             "projection-head": "none vs linear vs MLP head, probing h (backbone) and z (head)"}
    for name, text in helps.items():
        p = ssub.add_parser(name, help=text)
        p.add_argument("--data", default="mnist5k", help="dataset name or .npz (labelled train and test)")
        p.add_argument("--out", default=f"studies/{name}", help="output directory (cells, JSON, PNG, Markdown)")
        b = p.add_mutually_exclusive_group()
        b.add_argument("--budget-steps", type=int, help="optimizer steps per cell (default 200)")
        b.add_argument("--budget-min", type=float, help="wall-clock minutes per cell (schedule sized to it)")
        p.add_argument("--backbone", default="resnet18")
        p.add_argument("--width", type=float, default=0.25, help="backbone width multiplier")
        p.add_argument("--image-size", type=int, help="resize images (default: native size)")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--lr", type=float, help="peak lr (default: SimCLR's, scaled by batch/256)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto")
        p.add_argument("--eval-train", type=int, default=10000, help="train images the probes use")
        p.add_argument("--eval-test", type=int, default=2000, help="test images the probes use")
        p.add_argument("--probe", action="append", choices=["knn", "linear"],
                       help="probe(s) per cell (repeatable; default knn, and linear for projection-head)")
        p.add_argument("--keep-checkpoints", action="store_true", help="keep each cell's checkpoint")
        p.add_argument("--overwrite", action="store_true", help="recompute cells already in --out")
        p.add_argument("--quiet", action="store_true")
        if name == "augmentations":
            p.add_argument("--transforms", help="comma-separated subset (default: crop,rotation,color,grayscale,"
                                                "blur,solarize,sobel,noise,cutout)")
        elif name == "temperature":
            p.add_argument("--temperatures", type=_floats, default=[0.05, 0.1, 0.2, 0.5, 1.0],
                           metavar="T,T", help="default 0.05,0.1,0.2,0.5,1.0")
        else:
            p.add_argument("--heads", type=lambda v: [h for h in v.split(",") if h], default=["none", "linear", "mlp"],
                           metavar="H,H", help="subset of none,linear,mlp")
        p.set_defaults(fn=cmd_study)
