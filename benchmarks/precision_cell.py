"""Does training precision change what SimCLR learns? One study cell per precision, the same everything else.

    python benchmarks/precision_cell.py --data ../shared/data/cifar10.npz                 # fp32 and bf16, ~6 min
    python benchmarks/precision_cell.py --precisions bf16 --out runs/studies/temp-bf16

Each cell is the temperature study's τ = 0.2 cell (SimCLR, ResNet-18 w0.25, batch 256, 390 steps, seed 0: the
same initial weights and data order) with ``train.precision`` set; the probes (kNN, linear) always run in fp32 on
the same images. Cells already in ``--out`` are reused, as in every study.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from selfsup.studies.base import StudySettings  # noqa: E402
from selfsup.studies.temperature import TemperatureStudy  # noqa: E402


def cell(data: str, out: Path, precision: str, steps: int) -> dict:
    class AtPrecision(TemperatureStudy):
        def config(self, method):
            cfg = super().config(method)
            cfg.train.precision = precision
            return cfg

    s = StudySettings(data=data, out=str(out / precision), budget_steps=steps, probes=("knn", "linear"))
    return AtPrecision(s).run([0.2])["cells"][0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10.npz")
    p.add_argument("--out", type=Path, default=Path("runs/precision"))
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=390)
    a = p.parse_args()
    print("precision  train_s  final_loss  knn_top1  linear_top1")
    for q in a.precisions.split(","):
        c = cell(a.data, a.out, q.strip(), a.steps)
        print(f"{q:<9} {c['train_s']:8.1f} {c['final_loss']:11.3f} {100 * c['knn_top1']:9.1f} "
              f"{100 * c['linear_top1']:12.1f}", flush=True)


if __name__ == "__main__":
    main()
