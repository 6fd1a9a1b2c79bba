"""Matplotlib figures for reports and studies. Every function returns a ``Figure`` (titled, axes labelled) or
None when there is nothing to plot; :func:`save_png` writes and closes it. matplotlib is imported lazily with
the Agg backend, so importing this module costs nothing and never needs a display.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

MONITOR_KEYS = ("emb_std_ratio", "rankme", "out_entropy_ratio", "out_marginal_entropy_ratio")
MONITOR_TITLES = {"emb_std_ratio": "embedding std × √D (0 = collapsed)", "rankme": "RankMe (effective rank)",
                  "out_entropy_ratio": "output entropy / log K (1 = uniform)",
                  "out_marginal_entropy_ratio": "entropy of the mean output / log K (0 = one dim)"}


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def _series(records: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    pts = [(r[x], r[key]) for r in records if isinstance(r.get(key), (int, float)) and x in r]
    return [p[0] for p in pts], [p[1] for p in pts]


# ----------------------------------------------------------------------------------------------- run curves
def plot_curves(records: Sequence[dict[str, Any]]):
    """Training loss and learning rate against the step (metrics.jsonl records)."""
    xs, loss = _series(records, "loss")
    xl, lr = _series(records, "lr")
    if not xs and not xl:
        return None
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    a.plot(xs, loss, color="C0", marker="o" if len(xs) < 30 else None, markersize=3)
    a.set(title="Training loss", xlabel="step", ylabel="loss")
    b.plot(xl, lr, color="C1", marker="o" if len(xl) < 30 else None, markersize=3)  # one point: still seen
    b.set(title="Learning rate", xlabel="step", ylabel="learning rate")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_knn(records: Sequence[dict[str, Any]]):
    """Online kNN top-1 (records with ``knn_top1``) against the epoch."""
    xs, ys = _series(records, "knn_top1", "epoch")
    if not xs:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 3.6))
    ax.plot(xs, [100 * y for y in ys], "o-")
    ax.set(title="Online kNN top-1 (k = 20, subsets)", xlabel="epoch", ylabel="kNN top-1 (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def monitor_thresholds() -> dict[str, tuple[float, str]]:
    """Each monitor's collapse threshold (engine/monitors.py ``CollapseThresholds``) and which side is collapse."""
    from ..engine.monitors import CollapseThresholds

    t = CollapseThresholds()
    return {"emb_std_ratio": (t.std_ratio_min, "below"), "rankme": (t.rankme_min, "below"),
            "out_entropy_ratio": (t.entropy_ratio_max, "above"),
            "out_marginal_entropy_ratio": (t.marginal_entropy_ratio_min, "below")}


def plot_monitors(records: Sequence[dict[str, Any]]):
    """One panel per collapse monitor present in the records (engine/monitors.py), with its collapse threshold
    as a dashed red line (the side past it is collapse)."""
    keys = [k for k in MONITOR_KEYS if _series(records, k)[0]]
    if not keys:
        return None
    limits = monitor_thresholds()
    fig, axes = pyplot().subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, k in zip(axes[0], keys):
        x, y = _series(records, k)
        ax.plot(x, y, color="C2", marker="o" if len(x) < 30 else None, markersize=3)
        if k in limits:
            v, side = limits[k]
            ax.axhline(v, color="C3", linestyle="--", linewidth=1.2, label=f"collapse {side} {v:g}")
            ax.legend(fontsize=7, loc="best")
        ax.set(title=MONITOR_TITLES[k], xlabel="step", ylabel=k)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_overlay(series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str, xlabel: str,
                 ylabel: str, logy: bool = False):
    """Several runs' curves on one axis (the comparison page)."""
    series = {k: v for k, v in series.items() if len(v[0])}
    if not series:
        return None
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name, marker="o" if len(x) < 30 else None, markersize=3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy and all(v > 0 for _, y in series.values() for v in y):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ images
def to_hwc(img: torch.Tensor):
    """(C, H, W) uint8 or float in [0, 1] → numpy (H, W, 3) or (H, W) float for imshow."""
    x = img.detach().float().cpu()
    if img.dtype == torch.uint8:
        x = x / 255.0
    x = x.clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x[:3].permute(1, 2, 0).numpy()


def image_grid(rows: Sequence[tuple[str, Sequence[torch.Tensor]]], *, title: str,
               borders: Sequence[Sequence[str | None]] | None = None, col_titles: Sequence[str] | None = None):
    """A grid: one labelled row per ``(label, images)``; ``borders[r][c]`` colours a cell's frame (e.g. red)."""
    n_rows, n_cols = len(rows), max((len(imgs) for _, imgs in rows), default=0)
    if not n_rows or not n_cols:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.25 * n_cols + 0.8, 1.3 * n_rows + 0.5), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(imgs):
                ax.axis("off")
                continue
            arr = to_hwc(imgs[c])
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1)
            color = borders[r][c] if borders is not None and c < len(borders[r]) else None
            for sp in ax.spines.values():
                sp.set_visible(color is not None)
                if color is not None:
                    sp.set_edgecolor(color)
                    sp.set_linewidth(3)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_embedding(points, labels=None, class_names: Sequence[str] | None = None, *, title: str):
    """A 2-D map (t-SNE) of embeddings ``points`` (N, 2), coloured by label when there are labels."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.7)
    else:
        labels = [int(v) for v in labels]
        classes = sorted(set(labels))
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            idx = [j for j, v in enumerate(labels) if v == c]
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(points[idx, 0], points[idx, 1], s=4, alpha=0.7, color=cmap(i % cmap.N), label=name)
        if len(classes) <= 20:
            ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set(title=title, xlabel="t-SNE 1", ylabel="t-SNE 2")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- studies
def heatmap(matrix, row_labels: Sequence[str], col_labels: Sequence[str], *, title: str, xlabel: str,
            ylabel: str, cbar: str, fmt: str = "{:.1f}"):
    """Annotated heatmap of ``matrix`` (R, C); NaN cells are left blank."""
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    fig, ax = pyplot().subplots(figsize=(max(7.0, 1.0 * m.shape[1] + 2.5), 0.8 * m.shape[0] + 1.8))  # title room
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    finite = m[np.isfinite(m)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if math.isfinite(m[i, j]):
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=8,
                        color="black" if m[i, j] > mid else "white")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.colorbar(im, ax=ax, label=cbar)
    fig.tight_layout()
    return fig


def _ref_lines(ax, refs: dict[str, float] | None) -> None:
    """Dashed horizontal reference lines (e.g. a random-init baseline), labelled in the legend."""
    for i, (name, v) in enumerate((refs or {}).items()):
        ax.axhline(v, color="0.35", linestyle=("--", ":", "-.")[i % 3], linewidth=1.2, label=name)


def plot_sweep(x: Sequence[float], ys: dict[str, Sequence[float]], *, title: str, xlabel: str, ylabel: str,
               logx: bool = False, refs: dict[str, float] | None = None):
    """One line per metric against a swept hyper-parameter; ``refs``: dashed reference levels."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for name, y in ys.items():
        ax.plot(x, y, "o-", label=name)
    _ref_lines(ax, refs)
    if logx:
        ax.set_xscale("log")
    ax.set_xticks(list(x), [f"{v:g}" for v in x])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_grouped_bars(groups: Sequence[str], bars: dict[str, Sequence[float]], *, title: str, xlabel: str,
                      ylabel: str, refs: dict[str, float] | None = None):
    """Grouped bars: one group per entry of ``groups`` (e.g. head), one bar per series (e.g. h / z probe);
    ``refs``: dashed reference levels."""
    import numpy as np

    fig, ax = pyplot().subplots(figsize=(1.8 * len(groups) + 2.5, 4))
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(bars.items()):
        pos = x + (i - (len(bars) - 1) / 2) * width
        rects = ax.bar(pos, vals, width, label=name)
        ax.bar_label(rects, fmt="%.1f", fontsize=7)
    _ref_lines(ax, refs)
    ax.set_xticks(x, groups)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
