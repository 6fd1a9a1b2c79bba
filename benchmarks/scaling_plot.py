"""What more time buys: kNN against the wall-clock budget, from ``pretrain_cifar10.py`` rows.

    for m in 2.5 5 10 20 40; do python benchmarks/pretrain_cifar10.py --method simclr --budget-min $m \\
        --out runs/scale-simclr-$m; done
    python benchmarks/scaling_plot.py --label simclr=simclr --out docs/figures/scaling-knn.png

Each ``--label NAME=SELECTOR`` is one curve: the rows of ``--results`` (JSON lines) whose method equals the
selector's method and whose overrides contain every ``--set`` of the selector (``simclr`` or
``simclr:data.image_size=24``). Several rows at one budget (seeds) are averaged and their spread drawn. Writes the
PNG and, beside it, a Markdown table (``.md``) with the budget, the kNN and linear top-1, images/s and epochs.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def select(rows: list[dict], selector: str) -> list[dict]:
    method, _, sets = selector.partition(":")
    need = [s for s in sets.split(",") if s]
    return [r for r in rows if r.get("method") == method and all(s in r.get("overrides", []) for s in need)
            and (need or not r.get("overrides"))]


def by_budget(rows: list[dict]) -> dict[float, list[dict]]:
    out: dict[float, list[dict]] = defaultdict(list)
    for r in rows:
        out[float(r["budget_min"])].append(r)
    return dict(sorted(out.items()))


def table(curves: dict[str, dict[float, list[dict]]]) -> str:
    lines = ["| recipe | minutes | seeds | kNN k=20 | linear | images/s | epochs | random-init kNN |",
             "|---|---|---|---|---|---|---|---|"]
    for name, budgets in curves.items():
        for m, rs in budgets.items():
            knn = [r["knn_top1"] * 100 for r in rs]
            lin = [r["linear_top1"] * 100 for r in rs]
            spread = (lambda v: f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else "")
            lines.append(f"| {name} | {m:g} | {len(rs)} | {statistics.mean(knn):.1f}{spread(knn)} % | "
                         f"{statistics.mean(lin):.1f}{spread(lin)} % | {statistics.mean(r['images_per_s'] for r in rs):.0f}"
                         f" | {statistics.mean(r['epochs'] for r in rs):.2f} | "
                         f"{statistics.mean(r['baseline_knn_top1'] for r in rs) * 100:.1f} % |")
    return "\n".join(lines)


def plot(curves: dict[str, dict[float, list[dict]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, budgets in curves.items():
        xs = list(budgets)
        ys = [statistics.mean(r["knn_top1"] * 100 for r in rs) for rs in budgets.values()]
        err = [statistics.stdev([r["knn_top1"] * 100 for r in rs]) if len(rs) > 1 else 0.0 for rs in budgets.values()]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    base = [r["baseline_knn_top1"] * 100 for b in curves.values() for rs in b.values() for r in rs]
    if base:
        ax.axhline(statistics.mean(base), color="gray", linestyle="--", label="random init")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("pretraining budget (wall-clock minutes, 2 CPU cores)")
    ax.set_ylabel("kNN top-1 on CIFAR-10 (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "runs" / "bench-results.jsonl"))
    p.add_argument("--label", action="append", required=True, metavar="NAME=METHOD[:KEY=VALUE,...]")
    p.add_argument("--out", default=str(ROOT / "docs" / "figures" / "scaling-knn.png"))
    a = p.parse_args()
    rows = [json.loads(line) for line in Path(a.results).read_text().splitlines() if line.strip()]
    curves = {}
    for spec in a.label:
        name, _, selector = spec.partition("=")
        chosen = select(rows, selector or name)
        if not chosen:
            raise SystemExit(f"scaling_plot: no rows in {a.results} match {selector or name!r}")
        curves[name] = by_budget(chosen)
    out = Path(a.out)
    plot(curves, out)
    out.with_suffix(".md").write_text(table(curves) + "\n")
    print(table(curves))


if __name__ == "__main__":
    main()
