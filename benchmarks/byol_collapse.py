"""BYOL with and without batch norm in the projector and predictor (the seeds' collapse experiment).

Fetterman & Albrecht (2020) found that BYOL without BN in its heads performs no better than random: the
representation collapses. This trains both variants for the same wall-clock budget and reports, on test images:

- ``std(z)·sqrt(d)``: the per-dimension std of the L2-normalised projector outputs z (d dims), times sqrt(d).
  About 1 for well-spread embeddings; near 0 means collapse to a point (the SimSiam paper's Fig. 2 monitor).
- the same for the backbone features h (what is evaluated);
- kNN top-1 (k=20) on the frozen backbone, against the random-init backbone.

Example (the lead's 10-minute CIFAR-10 setting; add --device cuda on a GPU)::

    PYTHONPATH=src python benchmarks/byol_collapse.py --data /work/shared/data/cifar10.npz --budget-min 10

A smoke test on CPU: ``--budget-min 0.5 --subset 2000 --eval-images 1000``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.api import pretrain
from selfsup.config import build_run_config
from selfsup.data import load_dataset
from selfsup.engine.build import build_run
from selfsup.engine.rundir import latest_checkpoint
from selfsup.evaluation.features import extract_features
from selfsup.evaluation.knn import knn_accuracy


def spread(x: torch.Tensor) -> float:
    """Mean over dimensions of the std of the L2-normalised rows, times sqrt(d): ~1 spread, ~0 collapsed."""
    z = F.normalize(x.float(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


@torch.no_grad()
def projections(method, split, mean, std, device, n: int) -> torch.Tensor:
    from selfsup.augment.pipeline import eval_view

    method.eval()
    view = eval_view(split.image_size[0], mean, std)
    out, seen = [], 0
    for x, _, _ in split.batches(512, shuffle=False):
        out.append(method.projector(method.backbone(view(x.to(device)))).float().cpu())
        seen += x.shape[0]
        if seen >= n:
            break
    return torch.cat(out)[:n]


def evaluate(method, data, device, n_train: int, n_test: int) -> dict[str, float]:
    bb = method.eval_backbone()
    ftr, ytr = extract_features(bb, data.train, data.mean, data.std, device, max_images=n_train)
    fte, yte = extract_features(bb, data.test, data.mean, data.std, device, max_images=n_test)
    z = projections(method, data.test, data.mean, data.std, device, n_test)
    return {"knn_top1": knn_accuracy(ftr, ytr, fte, yte, k=20), "std_h_sqrt_d": spread(fte),
            "std_z_sqrt_d": spread(z), "dim_z": z.shape[1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/cifar10.npz")
    p.add_argument("--budget-min", type=float, default=10.0, help="wall-clock pretraining budget per variant")
    p.add_argument("--subset", type=int, default=None, help="pretrain on the first N training images")
    p.add_argument("--eval-images", type=int, default=10000, help="train/test images used for kNN and the std")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/byol_collapse")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra method.* overrides for both variants, e.g. momentum_base=0.99")
    a = p.parse_args(argv)

    data = load_dataset(a.data)
    if a.subset:
        data.train = data.train.subset(torch.arange(min(a.subset, data.train.num_images)))
    extra = {k: v for k, _, v in (s.partition("=") for s in a.set)}
    results = {}
    for name, bn in (("bn", True), ("no_bn", False)):
        cfg = build_run_config({
            "method": {"name": "byol", "bn_in_heads": bn, **extra},
            "data": {"path": a.data},
            "backbone": {"name": a.backbone, "width": a.width, "cifar_stem": True},
            "train": {"epochs": 1000, "time_limit_min": a.budget_min, "batch_size": a.batch_size,
                      "device": a.device, "seed": a.seed, "log_every": 10},
        })
        run = Path(a.out) / name
        res = pretrain(cfg, run, overwrite=True, data=data, quiet=True)
        losses = [json.loads(l).get("loss") for l in (run / "metrics.jsonl").read_text().splitlines()]
        last_loss = next((v for v in reversed(losses) if v is not None), float("nan"))  # last logged window
        built = build_run(cfg, data)
        base = evaluate(built.method, data, built.device, a.eval_images, a.eval_images)
        built.method.load_state_dict(latest_checkpoint(run)[1]["method"])
        trained = evaluate(built.method, data, built.device, a.eval_images, a.eval_images)
        results[name] = {"steps": res.steps, "epochs": round(res.epochs, 2), "images_per_s": round(res.images_per_s),
                         "last_logged_loss": last_loss, **trained,
                         "random_init_knn_top1": base["knn_top1"], "random_init_std_h_sqrt_d": base["std_h_sqrt_d"]}
        print(f"{name:>6}: {res.steps} steps ({res.epochs:.2f} epochs), loss {last_loss:.4f}, "
              f"kNN {trained['knn_top1']:.3f} (random init {base['knn_top1']:.3f}), "
              f"std(z)·√d {trained['std_z_sqrt_d']:.3f}, std(h)·√d {trained['std_h_sqrt_d']:.3f}", flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
