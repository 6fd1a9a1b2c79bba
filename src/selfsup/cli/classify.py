"""``selfsup finetune SOURCE --data LABELLED --out DIR`` and ``selfsup predict DIR --data IMAGES --out FILE.csv``."""
from __future__ import annotations

import argparse

HEADS = ("linear", "mlp", "finetune")  # use.classifier.HEADS, without torch for --help


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..use.classifier import finetune

    finetune(args.source, args.data, args.out, test=args.test, head=args.head, epochs=args.epochs,
             batch_size=args.batch_size, device=args.device, seed=args.seed, quiet=args.quiet)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..use.classifier import predict

    predict(args.classifier, args.data, args.out, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
            quiet=args.quiet)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ft = sub.add_parser("finetune", help="train a classifier you keep on labelled images, from a pretrained run",
                        description="Train a classifier from the encoder of a pretrained run on labelled images "
                        "(class subfolders, an .npz with y_train, or a built-in dataset) and save it as a folder "
                        "(model.safetensors + classifier.json with class names and preprocessing). --head linear "
                        "(frozen encoder), mlp (frozen encoder, 2-layer head) or finetune (the whole network); "
                        "the training loop and defaults are the eval protocols' (linear-aug, finetune).")
    ft.add_argument("source", help="run directory of a pretrained encoder")
    ft.add_argument("--data", required=True, help="labelled training images: folder, .npz or dataset name")
    ft.add_argument("--test", help="labelled test images: the classifier's top-1 on them is printed and saved")
    ft.add_argument("--out", required=True, help="classifier folder to write")
    ft.add_argument("--head", default="linear", choices=HEADS)
    ft.add_argument("--epochs", type=int, help="training epochs (default: the eval protocol's, 30)")
    ft.add_argument("--batch-size", type=int, help="default 256")
    ft.add_argument("--device", default="auto")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--quiet", action="store_true")
    ft.set_defaults(fn=cmd_finetune)

    pr = sub.add_parser("predict", help="classify images with a classifier folder (selfsup finetune) into a CSV",
                        description="Classify every image of a folder (recursive), an .npz or a dataset with a "
                        "classifier folder written by selfsup finetune; writes file, predicted, confidence and "
                        "the top-k classes with their probabilities (top1, p1, top2, p2, ...).")
    pr.add_argument("classifier", help="classifier folder (selfsup finetune --out)")
    pr.add_argument("--data", required=True, help="images to classify: folder, .npz or dataset name")
    pr.add_argument("--out", required=True, help="predictions CSV to write")
    pr.add_argument("--top-k", type=int, default=3, help="classes listed per image (default 3)")
    pr.add_argument("--batch-size", type=int, default=256)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(fn=cmd_predict)
