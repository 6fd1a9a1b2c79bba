"""Pretrain a method on CIFAR-10 for a fixed wall-clock budget, then evaluate it and its random-init baseline.

    python benchmarks/pretrain_cifar10.py --method simclr --budget-min 10
    python benchmarks/pretrain_cifar10.py --config speedrun-cpu --budget-min 10     # the time-to-accuracy recipe

Defaults are the CPU benchmark configuration: ResNet-18 width 0.25, CIFAR stem, the method's default batch
(256; EMP-SSL's is 100), 32 px, ``../shared/data/cifar10.npz`` (30k train / 10k test). The learning-rate
schedule is sized from the measured speed so that the cosine ends when the budget does. Prints one JSON line
with images/s, epochs, kNN (k=20 and k=1) and linear top-1 of the run and of the baseline, and appends it to
``--results`` (JSON lines).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from selfsup.api import pretrain  # noqa: E402
from selfsup.cli.config_args import config_from_args  # noqa: E402
from selfsup.evaluation.runner import evaluate_run  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default=None, help="default: the --config's method, else simclr")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10.npz"))
    p.add_argument("--budget-min", type=float, default=10.0)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=None, help="default: the method's (256; EMP-SSL 100)")
    p.add_argument("--epochs", type=int, default=200, help="upper bound; the budget decides")
    p.add_argument("--no-compile", action="store_true", help="run eager (compile is on by default)")
    p.add_argument("--config", default=None, help="a preset (e.g. speedrun-cpu) or YAML under the options here")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="run directory (default runs/bench-<method>)")
    p.add_argument("--results", default=str(ROOT / "runs" / "bench-results.jsonl"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    ns = argparse.Namespace(
        config=a.config, method=a.method, data=a.data, image_size=None, backbone=a.backbone, width=a.width,
        cifar_stem=a.backbone.startswith("resnet") or None, epochs=a.epochs, max_steps=None,
        time_limit_min=a.budget_min, batch_size=a.batch_size, lr=None, optimizer=None, seed=a.seed, device=None,
        compile=not a.no_compile, knn_every=None, checkpoint_every=None, set=a.set,
    )
    cfg = config_from_args(ns)
    name = cfg.method.name
    out = Path(a.out or ROOT / "runs" / f"bench-{name}")
    t0 = time.perf_counter()
    res = pretrain(cfg, out, overwrite=True)
    t1 = time.perf_counter()
    ev = evaluate_run(out, ["knn", "linear"], device=cfg.train.device)
    ran = yaml.safe_load((out / "config.yaml").read_text())  # the resolved config (the batch the method chose)
    row = {
        "method": name, "backbone": f"{a.backbone} w{a.width}", "batch_size": ran["train"]["batch_size"],
        "budget_min": a.budget_min, "compile": not a.no_compile, "config": a.config, "overrides": a.set,
        "images_per_s": round(res.images_per_s, 1), "epochs": round(res.epochs, 2), "steps": res.steps,
        "pretrain_s": round(t1 - t0, 1), "eval_s": round(time.perf_counter() - t1, 1),
        "knn_top1": ev["knn"]["top1"], "knn_top1_k1": ev["knn"]["top1_k1"], "linear_top1": ev["linear"]["top1"],
        "baseline_knn_top1": ev["baseline"]["knn"]["top1"], "baseline_linear_top1": ev["baseline"]["linear"]["top1"],
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    with open(a.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
