"""Local (dense) losses: VICRegL's matching of feature-map positions across two views (Bardes, Ponce & LeCun
2022, "VICRegL: Self-Supervised Learning of Local Visual Features", Sec. 3.2).

Each view's last feature map is a set of N local features (B, N, D). A position of one view is paired with
its nearest position in the other view, either in image space (location-based: the distance between the
cells' centres in the original image, from the crop boxes) or in feature space (feature-based: the L2 distance
between the local features); of the N pairs only the ``num_matches`` closest are kept (the paper's γ; the
authors' code keeps 20 of the 49 positions of a 7×7 map). Each matching is applied in both directions (view 1
→ 2 and 2 → 1) and the matched features enter VICReg's three terms. The selection is not differentiated (as
in the authors' code, where the indices come from a sort): the gradient flows through the matched features.
"""
from __future__ import annotations

import torch

from .precision import fp32_loss
from .redundancy import covariance_loss, invariance_loss, variance_loss


def _check_maps(maps: torch.Tensor, loc: torch.Tensor, name: str) -> None:
    if maps.ndim != 3 or loc.ndim != 3 or loc.shape[:2] != maps.shape[:2] or loc.shape[2] != 2:
        raise ValueError(f"vicregl_local_loss: {name} must be (B, N, D) features and (B, N, 2) locations, got "
                         f"{tuple(maps.shape)} and {tuple(loc.shape)}")


@torch.no_grad()
def _match_nearest(distances: torch.Tensor, num_matches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """distances (B, N, M) → (source (B, k), target (B, k)) indices: each source position's nearest target,
    keeping the k = min(num_matches, N) sources with the smallest such distance, in raster order."""
    k = min(num_matches, distances.shape[1])
    nearest_d, nearest = distances.min(dim=2)
    keep = nearest_d.topk(k, dim=1, largest=False).indices.sort(dim=1).values
    return keep, nearest.gather(1, keep)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), index (B, k) → (B·k, D)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2])).reshape(-1, x.shape[2])


@fp32_loss
def vicreg_terms(x: torch.Tensor, y: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                 cov_weight: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """VICRegL's weighted VICReg loss of paired features x, y (N, D):
    ``λ s(x, y) + μ (v(x) + v(y)) / 2 + ν (c(x) + c(y)) / 2``. The authors' VICRegL code averages the two
    branches' covariance terms (VICReg's code sums them); we follow it here, for the global and local terms."""
    return (sim_weight * invariance_loss(x, y)
            + var_weight * (variance_loss(x, gamma) + variance_loss(y, gamma)) / 2
            + cov_weight * (covariance_loss(x) + covariance_loss(y)) / 2)


@fp32_loss
def vicregl_local_loss(maps1: torch.Tensor, maps2: torch.Tensor, loc1: torch.Tensor, loc2: torch.Tensor,
                       num_matches: int = 20, sim_weight: float = 25.0, var_weight: float = 25.0,
                       cov_weight: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """VICRegL's local loss. maps1 (B, N, D), maps2 (B, M, D): the two views' local features; loc1 (B, N, 2),
    loc2 (B, M, 2): their cells' centres in image coordinates. Scalar:

    ``Σ_{matching ∈ {location, feature}} (ℓ(1 → 2) + ℓ(2 → 1)) / 2`` with ℓ(a → b) = :func:`vicreg_terms` of
    the k kept pairs (a's position, its nearest position in b), pooled over the batch into (B·k, D).

    The authors' code computes the variance and covariance of the matched features per match slot over the
    batch and averages over the slots; we pool the B·k matched features, the same statistics over a k times
    larger sample, which do not depend on the raster order in which the kept positions are listed.
    """
    _check_maps(maps1, loc1, "view 1")
    _check_maps(maps2, loc2, "view 2")
    w = (sim_weight, var_weight, cov_weight, gamma)
    total = maps1.new_zeros(())
    with torch.no_grad():
        by_location = (torch.cdist(loc1.float(), loc2.float()), torch.cdist(loc2.float(), loc1.float()))
        by_feature = (torch.cdist(maps1, maps2), torch.cdist(maps2, maps1))
    for d12, d21 in (by_location, by_feature):
        s1, t2 = _match_nearest(d12, num_matches)
        s2, t1 = _match_nearest(d21, num_matches)
        total = total + (vicreg_terms(_gather_rows(maps1, s1), _gather_rows(maps2, t2), *w)
                         + vicreg_terms(_gather_rows(maps2, s2), _gather_rows(maps1, t1), *w)) / 2
    return total
