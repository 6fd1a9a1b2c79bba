"""MLP probe on cached frozen features: the 2-layer MLP with a ReLU between, the non-linear
probe beside the linear one.

Features are standardised with train statistics; the MLP ``Linear(D, hidden) → ReLU → Linear(hidden, C)`` is
built with :func:`selfsup.heads.mlp.mlp` (no norm) and trained with AdamW on mini-batches of features, so it
costs seconds even for 50k images. It shows how much of the information is present but not linearly readable.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.mlp import mlp
from ..registry import EVALUATORS
from .protocols import EvalContext


def mlp_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
              test_labels: torch.Tensor, *, num_classes: int, hidden_dim: int = 512, epochs: int = 30,
              lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0) -> dict[str, float]:
    """Top-1 on the test features of a 2-layer MLP fitted on ``(N, D)`` train features."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    net = mlp([xtr.shape[1], hidden_dim, num_classes], norm=None)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    n = xtr.shape[0]
    steps = epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    last = torch.zeros(())
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(net(xtr[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last = loss.detach()
    with torch.no_grad():
        top1 = float((net(xte).argmax(1) == test_labels).float().mean())
    return {"top1": top1, "train_loss": float(last)}


@EVALUATORS.register("mlp", help="2-layer MLP (ReLU) on cached frozen features, AdamW, cosine (--epochs)",
                     options={"epochs": 30, "hidden_dim": 512, "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 256})
def mlp_protocol(ctx: EvalContext) -> dict[str, Any]:
    ftr, ytr, fte, yte = ctx.features()
    p = {k: ctx.opt(k) for k in ("hidden_dim", "lr", "weight_decay", "batch_size")}
    p["epochs"] = ctx.opt("epochs", ctx.epochs)
    if p["epochs"] < 1 or p["hidden_dim"] < 1:
        raise ConfigError(f"eval options 'mlp.epochs' and 'mlp.hidden_dim' must be >= 1, got {p['epochs']}, "
                          f"{p['hidden_dim']}")
    r = mlp_probe(ftr, ytr, fte, yte, num_classes=ctx.num_classes, seed=ctx.seed, **p)
    return {"top1": r["top1"], "labelled_images": int(ytr.numel()),
            "params": {**p, "layers": "Linear-ReLU-Linear", "optimizer": "adamw, cosine",
                       "features": "frozen, pooled, standardised", "train_loss": round(r["train_loss"], 4)}}
