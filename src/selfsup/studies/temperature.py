"""``selfsup study temperature``: NT-Xent temperature sweep (SimCLR's sensitivity to τ, Chen et al. 2020).

One cell per temperature, everything else fixed (SimCLR's default views and head); kNN top-1 per cell, and the
linear probe when asked (``--probe linear``).
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError
from .base import Study, footer, md_table, pct

DEFAULT_TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 1.0)


class TemperatureStudy(Study):
    name = "temperature"

    def run(self, temperatures: Sequence[float] = DEFAULT_TEMPERATURES) -> dict[str, Any]:
        temps = sorted(set(float(t) for t in temperatures))
        bad = [t for t in temps if t <= 0]
        if not temps or bad:
            raise ConfigError(f"--temperatures must be > 0, got {list(temperatures)}")
        base = self.baseline()
        cells = [self.run_cell(f"t{t:g}", {"temperature": t}) for t in temps]
        metrics = [m for m in ("knn_top1", "linear_top1") if m in cells[0]]
        best = max(cells, key=lambda c: c[metrics[0]])
        results = {**self.header(), "temperatures": temps, "metrics": metrics, "cells": cells,
                   "best": {"temperature": best["method"]["temperature"], metrics[0]: best[metrics[0]]}}
        from ..viz.plots import plot_sweep

        fig = plot_sweep(temps, {m.replace("_", " "): [100 * c[m] for c in cells] for m in metrics},
                         title=f"NT-Xent temperature sweep ({self.s.budget()} per cell)", xlabel="temperature τ",
                         ylabel="top-1 (%)", logx=True,
                         refs={f"random init {m.replace('_top1', '')}": 100 * base[m] for m in metrics})
        md = ("## NT-Xent temperature sweep\n\n"
              + md_table(["temperature"] + [m.replace("_", " ") + " %" for m in metrics] + ["final loss"],
                         [[f"{t:g}"] + [pct(c[m]) for m in metrics] + [f"{c['final_loss']:.3f}"]
                          for t, c in zip(temps, cells)])
              + f"\nBest: τ = {results['best']['temperature']:g}.\n" + footer(self))
        results["files"] = {k: str(v) for k, v in self.write(results, fig, md).items()}
        return results
