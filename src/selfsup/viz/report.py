"""``selfsup report RUN`` → ``RUN/report.html`` (self-contained) and ``RUN/report/*.png``; several runs → one
comparison page.

What a run's page shows, and what each section needs:

=============== ======================================= ==============================================
section id      content                                 needs
=============== ======================================= ==============================================
summary         run.json (method, steps, speed, ...)    run.json
curves          loss and learning rate per step         metrics.jsonl
knn             online kNN top-1 per epoch              metrics.jsonl with ``knn_top1`` (--knn-every)
monitors        collapse monitors (std, RankMe, ...)    metrics.jsonl
augmentations   originals and their views, as trained   config + data
tsne            t-SNE of test embeddings, by label      config + data + checkpoint
retrieval       top-8 train neighbours of test queries  config + data + checkpoint
layers          layer-wise linear probe                 eval.json ``layers`` (or RUN/layers.png)
attention       CLS attention maps (ViT runs)           config + data + checkpoint, a ViT
evaluation      every protocol vs random init           eval.json
config          the resolved config                     config.yaml (or the checkpoint's)
=============== ======================================= ==============================================

A section whose inputs are missing (or that fails) gets a note saying why; the page is always written.
"""
from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path
from typing import Any, Sequence

from ..engine.rundir import RunDirError
from ..errors import ConfigError
from ..progress import phase, track
from . import plots
from .html import Section, render_page
from .run_context import RunContext, read_metrics
from .sections import BUILDERS, DEFAULTS, SECTIONS, TITLES, retrieve

__all__ = ["SECTIONS", "TITLES", "RunContext", "read_metrics", "report_compare", "report_run", "retrieve"]


def html_out(out: str | Path) -> Path:
    """``--out`` checked: an ``.html`` file (its PNGs go in the folder of the same name without ``.html``)."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"report: --out {out} must end in .html (the page; its PNGs go in {out.with_suffix('')}/)")
    if out.is_dir():
        raise ConfigError(f"report: --out {out} is a directory; name the page's file")
    return out


def prepare_output(out: Path) -> Path:
    """Create the PNG folder beside ``out`` and check ``out`` can be written, before anything is computed: an
    unwritable place (a read-only run directory, a parent that is a file) is one line and leaves no file behind."""
    png_dir = out.with_suffix("")
    try:
        png_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunDirError(f"report: cannot write {out} (and its PNGs in {png_dir}/): {e.strerror or e}") from None
    return png_dir


def write_page(out: Path, text: str) -> Path:
    """Write the page atomically (a temporary file renamed over ``out``): a failed write leaves no half page."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", suffix=".tmp", dir=out.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a page meant to be shared
        os.replace(tmp, out)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise RunDirError(f"report: cannot write {out}: {e.strerror or e}") from None
    return out


def report_run(run_dir: str | Path, out: str | Path | None = None, *, data: str | None = None,
               device: str = "cpu", **options: Any) -> Path:
    """Write the run's report page (default ``RUN/report.html``, PNGs in ``RUN/report/``); returns its path.

    ``options``: preview (images in the augmentation grid), tsne_points, queries, neighbours, retrieval_pool
    (train images searched), attention (images with attention maps).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        from ..data import DataError

        raise DataError(f"run directory not found: {run_dir}")
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown report options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = {**DEFAULTS, **options}
    out = html_out(out) if out is not None else run_dir / "report.html"
    ctx = RunContext(run_dir, prepare_output(out), data, device)
    ctx.load()
    sections = []
    phase(f"building the report of {run_dir} → {out}")
    for sid in track(SECTIONS, len(SECTIONS), "report", unit="section"):
        s = Section(sid, TITLES[sid])
        try:
            BUILDERS[sid](ctx, s, opts)
        except Exception as e:  # a report never crashes: the section says what went wrong
            s.note(f"could not make this section: {type(e).__name__}: {e}")
            s.pre("".join(traceback.format_exception_only(type(e), e)))
        sections.append(s)
    method = (ctx.info or {}).get("method") or ((ctx.config or {}).get("method") or {}).get("name", "?")
    return write_page(out, render_page(f"Run report: {run_dir.name}", sections, f"{run_dir} · method {method}"))


# ------------------------------------------------------------------------------------------- comparison
def _looks_like_run(p: Path) -> bool:
    return any((p / n).exists() for n in ("config.yaml", "metrics.jsonl", "run.json", "eval.json", "checkpoints"))


OVERLAYS = (("loss", "Training loss", "loss", "step", "loss", False),
            ("knn", "Online kNN", "knn_top1", "epoch", "kNN top-1", False),
            ("lr", "Learning rate", "lr", "step", "learning rate", False),
            ("rankme", "RankMe (collapse monitor)", "rankme", "step", "RankMe", False))


def report_compare(run_dirs: Sequence[str | Path], out: str | Path = "report-compare.html") -> Path:
    """One page across runs: the compare table (evaluation/compare.py) and overlaid curves."""
    from ..evaluation.compare import CAPTION, load_runs, table_cells

    dirs = [Path(p) for p in run_dirs if Path(p).is_dir()]
    runs = [p for p in dirs if _looks_like_run(p)] or dirs
    rows = load_runs(runs)  # raises naming the paths when none is a directory
    out = html_out(out)
    png_dir = prepare_output(out)
    records = {p.name: read_metrics(p / "metrics.jsonl") for p in runs}
    table_s = Section("compare", "Comparison table")
    head, body, notes = table_cells(rows)
    table_s.table(head, body)
    for line in [CAPTION, *notes]:
        table_s.caption(line)
    sections = [table_s]
    for sid, title, key, x, ylabel, logy in OVERLAYS:
        s = Section(sid, title)
        try:
            fig = plots.plot_overlay({n: plots._series(r, key, x) for n, r in records.items()}, title=title,
                                     xlabel=x, ylabel=ylabel, logy=logy)
            if fig is None:
                s.note(f"no run has '{key}' records in metrics.jsonl")
            else:
                s.image(plots.save_png(fig, png_dir / f"{sid}.png"))
        except Exception as e:
            s.note(f"could not make this section: {type(e).__name__}: {e}")
        sections.append(s)
    missing = [p.name for p in runs if not records[p.name]]
    if missing:
        sections[1].note(f"no metrics.jsonl records for: {', '.join(missing)}")
    return write_page(out, render_page(f"Comparison of {len(runs)} runs", sections, ", ".join(map(str, runs))))
