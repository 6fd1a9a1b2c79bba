"""``selfsup compare RUN [RUN ...]``: one Markdown/CSV table across runs (see evaluation/compare.py)."""
from __future__ import annotations

import argparse
import sys


def cmd_compare(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare_runs

    md, _ = compare_runs(args.runs, out=args.out)
    print(md, end="")
    print(f"written: {args.out}.md, {args.out}.csv", file=sys.stderr)
    return 0


def add_compare_parser(sub) -> None:
    cp = sub.add_parser("compare", help="one table (Markdown + CSV) across runs: method, speed, every protocol")
    cp.add_argument("runs", nargs="+", help="run directories (e.g. runs/*); other paths are skipped")
    cp.add_argument("--out", default="compare", help="output prefix: writes OUT.md and OUT.csv (default: compare)")
    cp.set_defaults(fn=cmd_compare)
