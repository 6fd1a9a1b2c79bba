"""What every study shares: settings, a fixed per-cell budget, training one cell, probing it, writing outputs.

A study is a grid of *cells*; each cell is one short SimCLR pretraining with the same budget (``--budget-steps``
optimizer steps, or ``--budget-min`` minutes of wall-clock with the schedule sized to it) followed by frozen-
feature probes (kNN k = 20 and, when asked, the cached linear probe) on subsets of the train/test splits.
Each cell is a normal run directory under ``OUT/cells/<cell>/`` (config.yaml, metrics.jsonl, run.json) plus
``cell.json`` with its probe results. Every study also probes the untrained backbone (``OUT/cells/random-init/``,
the cells' shared initial weights): the floor a cell must clear to have learned anything. A study run again into
the same ``--out`` reuses finished cells (pass ``--overwrite`` to recompute them). Checkpoints are deleted after
probing unless ``--keep-checkpoints``.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, cast

from torch import nn

from ..api import pretrain
from ..config import RunConfig, build_run_config
from ..data import ImageDataset, load_dataset
from ..engine.build import build_run, resolve_device
from ..engine.rundir import latest_checkpoint, write_json
from ..errors import ConfigError
from ..evaluation.features import extract_features
from ..evaluation.knn import knn_accuracy
from ..evaluation.linear import linear_probe

PROBES = ("knn", "linear")


@dataclass
class StudySettings:
    data: str = "mnist5k"
    out: str = "studies"
    budget_steps: int | None = None  # None and no budget_min: DEFAULT_STEPS
    budget_min: float | None = None
    backbone: str = "resnet18"
    width: float = 0.25
    cifar_stem: bool | None = None  # None: on for ResNets on images <= 64 px
    image_size: int | None = None
    batch_size: int = 256
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    eval_train: int = 10000  # train images whose features the probes use
    eval_test: int = 2000
    probes: tuple[str, ...] = ("knn",)
    keep_checkpoints: bool = False
    overwrite: bool = False
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more config sections, e.g. {"augment": {...}}

    DEFAULT_STEPS = 200

    def validate(self) -> None:
        if self.budget_steps is not None and self.budget_min is not None:
            raise ConfigError("give --budget-steps or --budget-min, not both")
        if self.budget_steps is not None and self.budget_steps < 1:
            raise ConfigError(f"--budget-steps must be >= 1, got {self.budget_steps}")
        if self.budget_min is not None and self.budget_min <= 0:
            raise ConfigError(f"--budget-min must be > 0, got {self.budget_min}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be >= 2, got {self.batch_size}")
        for p in self.probes:
            if p not in PROBES:
                raise ConfigError(f"unknown probe '{p}'; known: {', '.join(PROBES)}")

    def budget(self) -> str:
        return f"{self.budget_min:g} min" if self.budget_min is not None else \
            f"{self.budget_steps or self.DEFAULT_STEPS} steps"


class Study:
    """Runs cells into ``settings.out`` and keeps their results; subclasses define the grid and the outputs."""

    name = "study"

    def __init__(self, settings: StudySettings, dataset: ImageDataset | None = None) -> None:
        settings.validate()
        self.s = settings
        self.out = Path(settings.out)
        self.data = dataset or load_dataset(settings.data, settings.image_size)
        if not self.data.has_labels:
            raise ConfigError(f"--data {settings.data}: studies probe with labels; it needs labelled train and "
                              "test splits")
        self.device = resolve_device(settings.device)
        self.out.mkdir(parents=True, exist_ok=True)
        self.base: dict[str, Any] | None = None  # the random-init probes, once baseline() ran

    # ------------------------------------------------------------------------------------------ one cell
    def config(self, method: dict[str, Any]) -> RunConfig:
        s, size = self.s, self.data.image_size[0]
        spe = max(1, self.data.train.num_images // s.batch_size)
        if s.budget_min is not None:
            train = {"epochs": 10_000, "time_limit_min": s.budget_min}
        else:
            steps = s.budget_steps or s.DEFAULT_STEPS
            train = {"epochs": math.ceil(steps / spe), "max_steps": steps}
        stem = s.cifar_stem if s.cifar_stem is not None else (s.backbone.startswith("resnet") and size <= 64)
        raw = {"method": {"name": "simclr", **method},
               "data": {"path": s.data, "image_size": s.image_size},
               "backbone": {"name": s.backbone, "width": s.width, "cifar_stem": stem},
               "train": {**train, "batch_size": min(s.batch_size, self.data.train.num_images), "seed": s.seed,
                         "device": s.device, "log_every": 10},
               "optim": {"lr": s.lr}, **s.extra}
        return build_run_config(raw)

    def run_cell(self, cell: str, method: dict[str, Any], views_fn: Callable[[ImageDataset], Any] | None = None,
                 *, probe_head: bool = False, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train (or reuse) one cell and probe it; returns the cell's result mapping (also in ``cell.json``).

        ``views_fn(data)`` replaces SimCLR's view pipeline (config.yaml then still names the preset: ``info``,
        e.g. the transformations, is recorded in cell.json)."""
        run_dir = self.out / "cells" / cell
        done = run_dir / "cell.json"
        cfg = self.config(method)
        key = {"config": cfg.to_dict(), **(info or {}), "probes": list(self.s.probes), "probe_head": probe_head,
               "eval_images": [self.s.eval_train, self.s.eval_test]}
        if done.is_file() and not self.s.overwrite:
            prev = json.loads(done.read_text())
            if prev.get("key") == key:  # same cell, same settings: reuse
                return prev
        t0 = time.perf_counter()
        views = views_fn(self.data) if views_fn is not None else None
        res = pretrain(cfg, run_dir, overwrite=True, data=self.data, quiet=True, views=views)
        train_s = time.perf_counter() - t0
        metrics = self.probe(cfg, run_dir, probe_head)
        result = {"cell": cell, **(info or {}), "method": cfg.method.to_dict(), "steps": res.steps, "final_loss": res.final_loss,
                  "stopped": res.stopped, "train_s": round(train_s, 1),
                  "probe_s": round(time.perf_counter() - t0 - train_s, 1), **metrics, "key": key}
        write_json(done, result)
        if not self.s.keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        if not self.s.quiet:
            shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items() if isinstance(v, float))
            print(f"{self.name}: {cell}: {res.steps} steps in {train_s:.0f}s, {shown}", file=sys.stderr, flush=True)
        return result

    def baseline(self) -> dict[str, Any]:
        """Probes of the untrained backbone, cached in ``OUT/cells/random-init/cell.json``.

        ``build_run`` seeds the weights from ``train.seed`` before anything else is built, so this backbone is
        every cell's starting point whatever the cell's method settings: the random-init baseline of the
        evaluation protocols, on the same probe images."""
        done = self.out / "cells" / "random-init" / "cell.json"
        cfg = self.config({})
        key = {"backbone": cfg.to_dict()["backbone"], "data": cfg.to_dict()["data"], "seed": self.s.seed, "probes": list(self.s.probes),
               "eval_images": [self.s.eval_train, self.s.eval_test], "image_size": self.s.image_size}
        if done.is_file() and not self.s.overwrite and json.loads(done.read_text()).get("key") == key:
            self.base = json.loads(done.read_text())
            return self.base
        t0 = time.perf_counter()
        built = build_run(cfg, self.data, self.device)
        metrics = self._probe_encoders({"h": built.method.eval_backbone()}, prefix=False)
        self.base = {"cell": "random-init", **metrics, "probe_s": round(time.perf_counter() - t0, 1), "key": key}
        done.parent.mkdir(parents=True, exist_ok=True)
        write_json(done, self.base)
        if not self.s.quiet:
            shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items())
            print(f"{self.name}: random-init baseline: {shown}", file=sys.stderr, flush=True)
        return self.base

    def probe(self, cfg: RunConfig, run_dir: Path, probe_head: bool) -> dict[str, float]:
        """kNN (and linear) top-1 of the backbone output h (and of the head output z when ``probe_head``)."""
        _, ckpt = latest_checkpoint(run_dir)
        built = build_run(cfg, self.data, self.device)
        built.method.load_state_dict(ckpt["method"])
        encoders: dict[str, nn.Module] = {"h": built.method.eval_backbone()}
        if probe_head:
            encoders["z"] = nn.Sequential(built.method.backbone, cast(nn.Module, built.method.projector))
        return self._probe_encoders(encoders, prefix=probe_head)

    def _probe_encoders(self, encoders: dict[str, nn.Module], prefix: bool) -> dict[str, float]:
        out: dict[str, float] = {}
        d = self.data
        assert d.test is not None  # studies' data has a test split
        for tag, enc in encoders.items():
            ftr, ytr = extract_features(enc, d.train, d.mean, d.std, self.device, max_images=self.s.eval_train)
            fte, yte = extract_features(enc, d.test, d.mean, d.std, self.device, max_images=self.s.eval_test)
            pre = f"{tag}_" if prefix else ""
            c = len(d.classes) or None
            if "knn" in self.s.probes:
                out[f"{pre}knn_top1"] = knn_accuracy(ftr, ytr, fte, yte, k=20, num_classes=c)
            if "linear" in self.s.probes:
                assert ytr is not None and yte is not None  # probing needs labelled splits
                out[f"{pre}linear_top1"] = linear_probe(ftr, ytr, fte, yte, seed=self.s.seed, num_classes=c)["top1"]
        return out

    # ------------------------------------------------------------------------------------------- outputs
    def header(self) -> dict[str, Any]:
        s = asdict(self.s)
        s.pop("extra", None)
        base = {k: v for k, v in (self.base or {}).items() if k.endswith("_top1")}
        assert self.data.test is not None  # studies' data has a test split
        return {"study": self.name, "budget_per_cell": self.s.budget(), "data": self.data.describe(),
                "settings": s, "probe_images": {"train": min(self.s.eval_train, self.data.train.num_images),
                                                "test": min(self.s.eval_test, self.data.test.num_images)},
                "random_init": base or None}

    def write(self, results: dict[str, Any], fig, markdown: str) -> dict[str, Path]:
        """``OUT/<study>.json``, ``OUT/<study>.png`` and ``OUT/<study>.md``."""
        from ..viz.plots import save_png

        stem = self.out / self.name
        write_json(stem.with_suffix(".json"), results)
        png = save_png(fig, stem.with_suffix(".png"), dpi=120)
        stem.with_suffix(".md").write_text(markdown)
        return {"json": stem.with_suffix(".json"), "png": png, "md": stem.with_suffix(".md")}


def pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def baseline_line(study: Study) -> str:
    """One Markdown line with the random-init probes (empty before ``baseline()`` ran)."""
    if study.base is None:
        return ""
    shown = ", ".join(f"{k.replace('_top1', '')} {pct(v)} %" for k, v in study.base.items() if k.endswith("_top1"))
    return f"\nRandom-init baseline (the cells' initial weights, untrained, same probe images): {shown}.\n"


def footer(study: Study) -> str:
    h = study.header()
    return baseline_line(study) + (
        f"\nBudget per cell: {h['budget_per_cell']} of SimCLR, {study.s.backbone} width {study.s.width:g}, "
        f"batch {study.s.batch_size}, seed {study.s.seed}; data {h['data']}; probes on the first "
        f"{h['probe_images']['train']} train / {h['probe_images']['test']} test images (top-1 %).\n")
