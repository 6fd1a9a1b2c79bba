"""``selfsup report RUN`` (one run's page) and ``selfsup report RUN RUN ...`` (one comparison page)."""
from __future__ import annotations

import argparse
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from ..data import DataError
    from ..viz.report import report_compare, report_run

    dirs = [p for p in args.runs if Path(p).is_dir()]
    if not dirs:
        raise DataError(f"report: no run directory among {', '.join(args.runs)}")
    if len(dirs) == 1:
        out = report_run(dirs[0], args.out, data=args.data, device=args.device, tsne_points=args.tsne_points,
                         queries=args.queries, preview=args.preview)
    else:
        out = report_compare(dirs, args.out or "report-compare.html")
    print(f"report: {out} (PNGs in {out.with_suffix('')}/)")
    return 0


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
