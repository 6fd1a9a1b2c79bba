"""``selfsup viz attention RUN --data ... --n 16 --out DIR``: attention-map PNGs of a ViT run."""
from __future__ import annotations

import argparse


def cmd_attention(args: argparse.Namespace) -> int:
    from ..viz.attention import attention_for_run

    paths = attention_for_run(args.run, args.out, data=args.data, n=args.n, device=args.device)
    print(f"wrote {len(paths)} attention maps (image, mean over heads, each head) → {args.out}")
    return 0


def add_parser(sub) -> None:
    """Register ``viz`` and its subcommands on the main parser's subparsers."""
    vz = sub.add_parser("viz", help="visualise a run (attention maps)")
    vsub = vz.add_subparsers(dest="viz_command", required=True)
    at = vsub.add_parser("attention", help="last-block CLS attention of a ViT run, per head and mean, as PNGs")
    at.add_argument("run", help="run directory")
    at.add_argument("--data", help="images to show (default: the run's data, test split first)")
    at.add_argument("--n", type=int, default=16, help="number of images")
    at.add_argument("--out", required=True, help="output directory for the PNGs")
    at.add_argument("--device", default="cpu")
    at.set_defaults(fn=cmd_attention)
