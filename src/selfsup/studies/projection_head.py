"""``selfsup study projection-head``: no head vs a linear head vs SimCLR's MLP head, probing both the backbone
output h and the head output z (SimCLR, Chen et al. 2020, Fig. 8: the head matters, and downstream tasks should use h).

Heads: ``none`` (``method.proj_layers=0``: the loss sees h, so z = h), ``linear`` (one layer to proj_dim),
``mlp`` (SimCLR's two layers). kNN and linear probes on h and on z per head.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError
from .base import Study, footer, md_table, pct

HEADS = {"none": 0, "linear": 1, "mlp": 2}


class ProjectionHeadStudy(Study):
    name = "projection-head"

    def run(self, heads: Sequence[str] = tuple(HEADS)) -> dict[str, Any]:
        unknown = [h for h in heads if h not in HEADS]
        if unknown or not heads:
            raise ConfigError(f"unknown head {unknown or heads}; known: {', '.join(HEADS)}")
        base = self.baseline()
        cells = [self.run_cell(h, {"proj_layers": HEADS[h]}, probe_head=True) for h in heads]
        metrics = [f"{r}_{p}_top1" for p in self.s.probes for r in ("h", "z")]
        results = {**self.header(), "heads": list(heads), "metrics": metrics, "cells": cells}
        if "mlp" in heads:
            mlp = cells[list(heads).index("mlp")]
            first = metrics[0].split("_", 1)[1]  # e.g. knn_top1
            others = [c for h, c in zip(heads, cells) if h != "mlp"]
            results["claims"] = {
                "mlp_head_helps_h": all(mlp[f"h_{first}"] >= c[f"h_{first}"] for c in others) if others else None,
                "h_beats_z_with_mlp": mlp[f"h_{first}"] > mlp[f"z_{first}"], "metric": first}
        from ..viz.plots import plot_grouped_bars

        fig = plot_grouped_bars(list(heads), {m.replace("_top1", "").replace("_", " "): [100 * c[m] for c in cells]
                                              for m in metrics},
                                title=f"Projection head: probing h vs z ({self.s.budget()} per cell)",
                                xlabel="projection head", ylabel="top-1 (%)",
                                refs={f"random init {p}": 100 * base[f"{p}_top1"] for p in self.s.probes})
        md = ("## Projection head: h (backbone output) vs z (head output)\n\n"
              + md_table(["head"] + [m.replace("_", " ") + " %" for m in metrics],
                         [[h] + [pct(c[m]) for m in metrics] for h, c in zip(heads, cells)])
              + "\nWith no head, z is h (the same numbers).\n" + footer(self))
        results["files"] = {k: str(v) for k, v in self.write(results, fig, md).items()}
        return results
