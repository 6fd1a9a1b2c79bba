"""``selfsup report RUN`` (one run's page) and ``selfsup report RUN RUN ...`` (one comparison page)."""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..viz.report import report_compare, report_run

    check_report_args(args)
    dirs = [p for p in args.runs if Path(p).is_dir() and any((Path(p) / m).exists() for m in RUN_MARKERS)]
    if not dirs:
        raise DataError(f"report: no run directory among {', '.join(args.runs)} (a run holds "
                        f"{', '.join(RUN_MARKERS)})")
    if len(dirs) < len(args.runs):
        skipped = [p for p in args.runs if p not in dirs]
        warnings.warn(f"report: skipped {len(skipped)} paths that are not run directories (first: {skipped[0]})",
                      stacklevel=2)
    if len(dirs) == 1:
        out = report_run(dirs[0], args.out, data=args.data, device=args.device, tsne_points=args.tsne_points,
                         queries=args.queries, preview=args.preview)
    else:
        out = report_compare(dirs, args.out or "report-compare.html")
    print(f"report: {out} (PNGs in {out.with_suffix('')}/)")
    return 0


RUN_MARKERS = ("config.yaml", "run.json", "eval.json", "metrics.jsonl", "checkpoints")  # compare.RUN_MARKERS
MAX_POINTS = 100_000  # t-SNE points, queries and preview images: beyond this a page is not readable anyway


def check_report_args(args: argparse.Namespace) -> None:
    """The options, before anything is loaded: one line naming the option."""
    from ..errors import ConfigError

    if args.out is not None and Path(args.out).suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {args.out}: a report is an HTML file, name it *.html")
    for flag, value, low in (("--tsne-points", args.tsne_points, 2), ("--queries", args.queries, 0),
                             ("--preview", args.preview, 0)):
        if not low <= value <= MAX_POINTS:
            raise ConfigError(f"{flag} must be in [{low}, {MAX_POINTS}], got {value}")
    if args.data is not None and not Path(args.data).exists():
        from ..registry import DATASETS

        if args.data not in DATASETS:
            raise ConfigError(f"--data {args.data}: not found (a dataset name, a .npz file or an image folder)")


def add_parser(sub) -> None:
    rp = sub.add_parser("report", help="HTML report of a run (curves, views, t-SNE, retrieval, evaluation); "
                                       "several runs: one comparison page")
    rp.add_argument("runs", nargs="+", help="run directory (several: a comparison page)")
    rp.add_argument("--out", help="the page, a file ending in .html (default RUN/report.html; several runs: "
                                    "report-compare.html); its PNGs go in OUT without .html/")
    rp.add_argument("--data", help="images for the preview, t-SNE and retrieval (default: the run's data)")
    rp.add_argument("--device", default="cpu")
    rp.add_argument("--tsne-points", type=int, default=2000, help="test embeddings in the t-SNE map")
    rp.add_argument("--queries", type=int, default=8, help="retrieval queries")
    rp.add_argument("--preview", type=int, default=8, help="images in the augmentation preview")
    rp.set_defaults(fn=cmd_report)
