"""k-nearest-neighbour classification on cached features (Wu et al. 2018's weighted vote).

Cosine similarity; each of the k neighbours votes for its class with weight ``exp(sim / τ)`` (τ = 0.07);
k = 1 is a plain nearest neighbour. Similarities are computed in chunks of test rows so that 50k × 10k never
materialises at once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, *, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (M,) for test features (M, D) given train features (N, D) and labels (N,)."""
    if train_feats.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_feats.shape[0]} train features but {train_labels.shape[0]} labels")
    c = int(num_classes or int(train_labels.max()) + 1)
    k = min(k, train_feats.shape[0])
    tr = F.normalize(train_feats.float(), dim=1)
    te = F.normalize(test_feats.float(), dim=1)
    preds = []
    for i in range(0, te.shape[0], chunk):
        sim = te[i : i + chunk] @ tr.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], c)
        weights = (top_sim / temperature).exp() if k > 1 else torch.ones_like(top_sim)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, *, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None) -> float:
    pred = knn_predict(train_feats, train_labels, test_feats, k=k, temperature=temperature, num_classes=num_classes)
    return float((pred == test_labels).float().mean())


def online_knn(backbone, data, device, max_train: int = 5000, max_test: int = 2000) -> float:
    """Quick kNN (k=20) monitor during pretraining on subsets of the labelled train and test splits."""
    from .features import extract_features

    ftr, ytr = extract_features(backbone, data.train, data.mean, data.std, device, max_images=max_train)
    fte, yte = extract_features(backbone, data.test, data.mean, data.std, device, max_images=max_test)
    return knn_accuracy(ftr, ytr, fte, yte, k=20)
