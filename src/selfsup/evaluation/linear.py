"""Linear probe on cached frozen features: multinomial logistic regression fitted with L-BFGS in seconds.

Features are standardised with train statistics; the L2 strength is chosen on a held-out 10% of the train
features (never on the test set), then the probe is refitted on all train features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = 200) -> torch.Tensor:
    """Weights (D+1, C) of a logistic regression with L2 penalty ``l2`` on the weights (not the bias)."""
    xb = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    w = torch.zeros(xb.shape[1], num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (torch.cat([x, torch.ones(x.shape[0], 1)], dim=1) @ w).argmax(dim=1)


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, *, l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3),
                 seed: int = 0, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 of the probe on the test features; the chosen ``l2`` and the validation accuracy are reported."""
    c = int(num_classes or int(max(train_labels.max(), test_labels.max())) + 1)
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(xtr.shape[0], generator=g)
    n_val = max(1, xtr.shape[0] // 10)
    val, fit = perm[:n_val], perm[n_val:]
    best = (-1.0, l2_grid[0])
    for l2 in l2_grid:
        w = _fit(xtr[fit], train_labels[fit], c, l2, max_iter=60)
        acc = float((_predict(w, xtr[val]) == train_labels[val]).float().mean())
        if acc > best[0]:
            best = (acc, l2)
    w = _fit(xtr, train_labels, c, best[1], max_iter=150)
    top1 = float((_predict(w, xte) == test_labels).float().mean())
    return {"top1": top1, "l2": best[1], "val_top1": best[0]}
