"""Evaluate a run: rebuild its model from the saved config, load the checkpoint, run protocols on it and on
the random-init baseline, print both side by side and write ``eval.json``."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, build_run_config
from ..data import DataError, load_dataset
from ..engine.rundir import latest_checkpoint, write_json
from ..engine.trainer import build_run, resolve_device
from ..registry import EVALUATORS
from .protocols import EvalContext


def _run_protocols(backbone, data, device, protocols, seed, options) -> tuple[dict[str, Any], dict[str, float]]:
    ctx = EvalContext(backbone, data, device, seed=seed, options=options)
    results, times = {}, {}
    for name in protocols:
        t0 = time.perf_counter()
        results[name] = EVALUATORS.get(name)(ctx)
        times[name] = round(time.perf_counter() - t0, 2)
    return results, times


def evaluate_run(run_dir: str | Path, protocols: list[str] | tuple[str, ...] = ("knn", "linear"), *,
                 eval_data: str | None = None, device: str = "auto", baseline: bool = True,
                 options: dict[str, Any] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Evaluate the newest checkpoint of ``run_dir``; returns and writes the ``eval.json`` mapping."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory not found: {run_dir}")
    for p in protocols:
        EVALUATORS.get(p)  # unknown protocol → error listing the known ones, before any work
    ckpt_path, ckpt = latest_checkpoint(run_dir)
    cfg = build_run_config(ckpt["config"])
    dev = resolve_device(device)
    data = load_dataset(eval_data or cfg.data.path, cfg.data.image_size, test_path=cfg.data.test_path)
    if not data.has_labels:
        raise DataError(f"{eval_data or cfg.data.path}: evaluation needs labelled train and test splits")
    t0 = time.perf_counter()
    built = build_run(cfg, data, dev)  # random init with the run's seed: this is the baseline's init too
    if data.channels != built.method.eval_backbone().in_channels:
        raise DataError(f"eval data has {data.channels} channels but the backbone expects "
                        f"{built.method.eval_backbone().in_channels}")
    opts = dict(options or {})
    out: dict[str, Any] = {}
    times: dict[str, Any] = {}
    if baseline:
        out["baseline"], times["baseline"] = _run_protocols(built.method.eval_backbone(), data, dev, protocols,
                                                            cfg.train.seed, opts)
    built.method.load_state_dict(ckpt["method"])
    trained, times["trained"] = _run_protocols(built.method.eval_backbone(), data, dev, protocols,
                                               cfg.train.seed, opts)
    result = {**trained, **({"baseline": out["baseline"]} if baseline else {})}
    result["protocol"] = {
        "checkpoint": ckpt_path.name, "step": int(ckpt["step"]), "method": cfg.method["name"],
        "backbone": cfg.backbone.name, "eval_data": eval_data or cfg.data.path,
        "train_images": data.train.num_images, "test_images": data.test.num_images,
        "labelled_images": data.train.num_images, "features": "frozen backbone, pooled, no augmentation",
        "seed": cfg.train.seed, "seconds": times, "wall_s": round(time.perf_counter() - t0, 1),
        "protocols": {p: trained[p].get("params", {}) for p in protocols},
    }
    write_json(run_dir / "eval.json", result)
    if not quiet:
        print(format_table(result, protocols), file=sys.stdout)
    return result


def format_table(result: dict[str, Any], protocols) -> str:
    rows = [f"{'protocol':<12}{'metric':<10}{'trained':>10}{'random-init':>13}{'gain':>9}"]
    for p in protocols:
        for metric, v in result[p].items():
            if not isinstance(v, float):
                continue
            base = result.get("baseline", {}).get(p, {}).get(metric)
            b = f"{100 * base:12.1f}%" if base is not None else f"{'-':>13}"
            gain = f"{100 * (v - base):+8.1f}" if base is not None else ""
            rows.append(f"{p:<12}{metric:<10}{100 * v:9.1f}%{b}{gain}")
    return "\n".join(rows)
