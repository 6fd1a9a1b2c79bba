"""Registered evaluation protocols. Each takes an :class:`EvalContext` and returns a dict of numbers.

Protocols run on the trained backbone and, separately, on the same architecture at random init (same seed),
so every number comes with its baseline. Features are extracted once per backbone and shared by protocols.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.base import ImageDataset
from ..registry import EVALUATORS
from .features import extract_features
from .knn import knn_accuracy
from .linear import linear_probe


@dataclass
class EvalContext:
    backbone: torch.nn.Module
    data: ImageDataset
    device: torch.device
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train_feats, train_labels, test_feats, test_labels), computed once."""
        if "feats" not in self._cache:
            d = self.data
            ftr, ytr = extract_features(self.backbone, d.train, d.mean, d.std, self.device)
            fte, yte = extract_features(self.backbone, d.test, d.mean, d.std, self.device)
            self._cache["feats"] = (ftr, ytr, fte, yte)
        return self._cache["feats"]

    @property
    def num_classes(self) -> int:
        _, ytr, _, yte = self.features()
        return max(len(self.data.classes), int(max(ytr.max(), yte.max())) + 1)


@EVALUATORS.register("knn", help="weighted kNN on frozen features: k=20 (tau 0.07) and k=1, cosine")
def knn_protocol(ctx: EvalContext) -> dict[str, Any]:
    ftr, ytr, fte, yte = ctx.features()
    k = int(ctx.options.get("k", 20))
    t = float(ctx.options.get("knn_temperature", 0.07))
    return {
        "top1": knn_accuracy(ftr, ytr, fte, yte, k=k, temperature=t, num_classes=ctx.num_classes),
        "top1_k1": knn_accuracy(ftr, ytr, fte, yte, k=1, num_classes=ctx.num_classes),
        "params": {"k": k, "temperature": t, "metric": "cosine"},
    }


@EVALUATORS.register("linear", help="logistic regression on cached frozen features (L-BFGS, L2 chosen on 10% of train)")
def linear_protocol(ctx: EvalContext) -> dict[str, Any]:
    ftr, ytr, fte, yte = ctx.features()
    r = linear_probe(ftr, ytr, fte, yte, seed=ctx.seed, num_classes=ctx.num_classes)
    return {"top1": r["top1"], "params": {"solver": "lbfgs", "l2": r["l2"], "val_top1": r["val_top1"],
                                          "augmentation": "none (cached features)"}}
