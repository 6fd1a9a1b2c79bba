"""Spherical k-means on the device, deterministic: DeepCluster-v2's clustering of its memory bank (Caron et al.
2020, SwAV paper, Appendix) and SMoG's periodic reset of its groups (Pang et al. 2022).

The embeddings are unit vectors; the E-step assigns each to the centroid of largest dot product, the M-step
averages the embeddings of each cluster and renormalises it; a cluster left empty keeps its centroid. The
initial centroids are embeddings drawn without replacement (the paper's random initialisation; with
replacement when there are fewer embeddings than clusters) from a generator seeded by the caller, so every rank,
and a resumed run, computes the same clustering from the same rows. The M-step's sums are a one-hot matrix
product rather than ``index_add_`` (whose CUDA kernel adds in a nondeterministic order).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 16384  # rows per E-step matrix product, to bound the (rows, K) score matrix


@torch.no_grad()
def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N,) index of the centroid (K, D) of largest dot product with each row of ``x`` (N, D)."""
    return torch.cat([(part @ centroids.T).argmax(dim=1) for part in x.split(CHUNK)])


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, iterations: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (k, D) and assignments (N,) of unit rows ``x`` (N, D) after ``iterations`` E/M steps
    (the last E-step gives the assignments). ``seed`` fixes the initial centroids."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=gen)[:k] if n >= k else torch.randint(0, n, (k,), generator=gen)
    centroids = x[pick.to(x.device)].clone()
    assign = nearest_centroid(x, centroids)
    for _ in range(iterations):
        onehot = F.one_hot(assign, k).to(x.dtype)  # (N, k)
        counts = onehot.sum(0)
        sums = onehot.T @ x
        full = counts > 0
        centroids = torch.where(full[:, None], sums / counts.clamp_min(1)[:, None], centroids)
        centroids = F.normalize(centroids, dim=1)
        assign = nearest_centroid(x, centroids)
    return centroids, assign
