"""``selfsup study augmentations``: SimCLR's augmentation ablation matrix (Chen et al. 2020, Fig. 5).

Each cell pretrains SimCLR with one pair of transformations composed (both views draw their own parameters),
and reports the kNN top-1 of the frozen backbone; the diagonal is one transformation alone. The pipeline applies
a pair in a fixed order (augment/named.py), so the matrix is symmetric and only its upper triangle is trained:
n(n+1)/2 cells for n transformations. SimCLR instead cropped every image first and transformed one branch only
(ImageNet images differ in size); here images are already equal-sized, so no crop is implied.

The seed's claim to check: crop + colour is the strongest pair.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from ..augment.named import TRANSFORMS, NamedViewPipeline, canonical_names
from .base import Study, footer, md_table, pct

if TYPE_CHECKING:
    from ..data.base import ImageDataset


class AugmentationStudy(Study):
    name = "augmentations"

    def run(self, transforms: Sequence[str] | None = None) -> dict[str, Any]:
        names = canonical_names(transforms) if transforms else list(TRANSFORMS)
        metric = "knn_top1" if "knn" in self.s.probes else "linear_top1"
        n = len(names)
        base = self.baseline()[metric]
        matrix = [[math.nan] * n for _ in range(n)]
        cells = []
        for i in range(n):
            for j in range(i, n):
                pair = [names[i]] if i == j else [names[i], names[j]]

                def views_fn(d: ImageDataset, p: list[str] = pair) -> NamedViewPipeline:
                    return NamedViewPipeline(p, d.image_size[0], d.mean, d.std)

                res = self.run_cell("+".join(pair), {}, views_fn, info={"transforms": pair})
                cells.append(res)
                matrix[i][j] = matrix[j][i] = res[metric]
        off = [c for c in cells if len(c["transforms"]) == 2]
        best = max(off or cells, key=lambda c: c[metric])
        results = {**self.header(), "transforms": names, "metric": metric, "matrix": matrix, "cells": cells,
                   "best": {"transforms": best["transforms"], metric: best[metric]},
                   "ranking": [{"transforms": c["transforms"], metric: c[metric]}
                               for c in sorted(cells, key=lambda c: -c[metric])],
                   "below_random_init": [c["transforms"] for c in cells if c[metric] <= base]}
        if {"crop", "color"} <= set(names) and off:
            cc = next(c for c in off if set(c["transforms"]) == {"crop", "color"})
            rank = 1 + sum(c[metric] > cc[metric] for c in off)
            results["claim_crop_color_strongest"] = {"holds": rank == 1, "rank_among_pairs": rank,
                                                     "pairs": len(off), metric: cc[metric]}
        from ..viz.plots import heatmap

        fig = heatmap([[100 * v for v in row] for row in matrix], names, names,
                      title=f"SimCLR augmentation pairs: {metric.replace('_', ' ')} (%), {self.s.budget()} per cell"
                            f"\n(random-init backbone: {pct(base)} %)",
                      xlabel="second transformation", ylabel="first transformation", cbar=f"{metric} (%)")
        md = (f"## Augmentation pairs ({metric}, %)\n\n"
              + md_table(["first \\ second"] + names, [[a] + [pct(v) for v in row] for a, row in zip(names, matrix)])
              + f"\nStrongest pair: {' + '.join(best['transforms'])} ({pct(best[metric])}%)."
              + (f" crop + color ranks {results['claim_crop_color_strongest']['rank_among_pairs']} of {len(off)} "
                 "pairs." if "claim_crop_color_strongest" in results else "")
              + f" {len(results['below_random_init'])} of {len(cells)} cells do not beat the random-init backbone."
              + "\n" + footer(self))
        results["files"] = {k: str(v) for k, v in self.write(results, fig, md).items()}
        return results
