"""Semi-supervised evaluation: train with a stratified fraction of the labels, test on the full test set.

SimCLR's semi-supervised table (Chen et al. 2020: 1 % / 10 % of ImageNet's labels). For each fraction f and seed s, every class keeps
``round(f · n_class)`` of its train images, drawn with a generator seeded by s; a fraction that leaves a class
with no image is an error. The indices (into the train split) are written to
``RUN/label-subsets/frac<f>-seed<s>.json`` so a number can be reproduced elsewhere. ``mode=linear`` (default)
fits the cached-feature linear probe on the subset; ``mode=finetune`` fine-tunes the whole network on it.

With a selection file (``selfsup eval RUN --protocol semi --selection FILE``, written by ``selfsup select``) the
subset is the file's images instead of a random stratified draw; the metric is ``top1@selected`` and the indices
go to ``RUN/label-subsets/selection-<file stem>.json``.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..registry import EVALUATORS
from .linear import linear_probe
from .protocols import EvalContext

DEFAULT_FRACTIONS = (0.01, 0.1)
SELECTED = "top1@selected"  # the metric of a run on a selection file's images


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int, classes: list[str] | None = None
                      ) -> torch.Tensor:
    """Sorted indices of ``round(fraction · n_c)`` images of every class c (``labels``: (N,) int64)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        n = int(round(fraction * idx.numel()))
        if n == 0:
            name = classes[c] if classes and c < len(classes) else str(c)
            need = 0.5 / idx.numel()
            raise ConfigError(f"label fraction {fraction:g} leaves class '{name}' with zero images (it has "
                              f"{idx.numel()} train images); use a fraction >= {need:.3g}")
        picked.append(idx[torch.randperm(idx.numel(), generator=g)[:n]])
    return torch.cat(picked).sort().values


def save_selection(run_dir: Path | None, name: str, idx: torch.Tensor, dataset: str) -> str | None:
    if run_dir is None:
        return None
    d = Path(run_dir) / "label-subsets"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"selection-{Path(name).stem}.json"
    path.write_text(json.dumps({"selection": name, "dataset": dataset, "split": "train",
                                "count": int(idx.numel()), "indices": idx.tolist()}) + "\n")
    return str(path.relative_to(run_dir))


def fraction_name(f: float) -> str:
    return f"{100 * f:g}%"


def save_subset(run_dir: Path | None, fraction: float, seed: int, idx: torch.Tensor, dataset: str) -> str | None:
    if run_dir is None:
        return None
    d = Path(run_dir) / "label-subsets"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"frac{fraction:g}-seed{seed}.json"
    path.write_text(json.dumps({"fraction": fraction, "seed": seed, "dataset": dataset, "split": "train",
                                "count": int(idx.numel()), "indices": idx.tolist()}) + "\n")
    return str(path.relative_to(run_dir))


@EVALUATORS.register("semi", help="stratified label fractions (default 1% and 10%), linear or finetune on the subset",
                     options={"mode": "linear", "epochs": 30, "lr_head": 0.1, "lr_backbone": 0.01,
                              "layer_decay": 1.0, "batch_size": 256, "weight_decay": 5e-4, "crop_scale_min": 0.08,
                              "augment": True, "l2_grid": (1e-5, 1e-4, 1e-3, 1e-2)})
def semi_protocol(ctx: EvalContext) -> dict[str, Any]:
    fractions = tuple(ctx.fractions or DEFAULT_FRACTIONS)
    mode = ctx.opt("mode")
    if mode not in ("linear", "finetune"):
        raise ConfigError(f"eval option 'semi.mode' must be 'linear' or 'finetune', got '{mode}'")
    ytr = ctx.data.train.labels
    assert ytr is not None  # label fractions need a labelled train split
    subsets: dict[str, torch.Tensor] = {}
    params: dict[str, Any] = {"mode": mode, "test": "full test split"}
    if ctx.selection is not None:
        subsets[SELECTED] = ctx.selection.sort().values
        params.update(sampling=f"the images of the selection file {ctx.selection_name}",
                      selection=ctx.selection_name)
    else:
        subsets = {f"top1@{fraction_name(f)}": stratified_subset(ytr, f, ctx.seed, ctx.data.classes)
                   for f in fractions}  # all checked first
        params.update(fractions=list(fractions), sampling="stratified per class")
    out: dict[str, Any] = {}
    counts, files = {}, {}
    for (key, idx), f in zip(subsets.items(), fractions if ctx.selection is None else (None,)):
        files[key] = (save_subset(ctx.run_dir, f, ctx.seed, idx, ctx.data.name) if f is not None
                      else save_selection(ctx.run_dir, ctx.selection_name, idx, ctx.data.name))
        counts[key] = int(idx.numel())
        if mode == "linear":
            ftr, ytr_f, fte, yte = ctx.features()
            r: dict[str, Any] = linear_probe(ftr[idx], ytr_f[idx], fte, yte, l2_grid=tuple(float(v) for v in ctx.opt("l2_grid")),
                             seed=ctx.seed, num_classes=ctx.num_classes)
            out[key] = r["top1"]
            params.setdefault("l2", {})[key] = r["l2"]
        else:
            if not hasattr(ctx.data.train, "subset"):
                raise ConfigError("semi.mode=finetune needs in-memory data (an image folder cannot be subset); "
                                  "use semi.mode=linear")
            from .finetune import run_trained

            r = run_trained(ctx, copy.deepcopy(ctx.backbone), train=ctx.data.train.subset(idx),
                            lr_backbone=ctx.opt("lr_backbone"), epochs=ctx.opt("epochs", ctx.epochs))
            out[key] = r["top1"]
            params.update({k: v for k, v in r["params"].items() if k not in ("train_loss", "steps")})
    first = next(iter(subsets))
    out["top1"] = out[first]
    params["top1_is"] = first
    out.update(params=params, labelled_images=counts, subset_files=files, summary=list(subsets))
    return out
