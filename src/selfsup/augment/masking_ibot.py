"""iBOT's and DINOv2's masks for the student's global views (Zhou et al. 2022, Sec. 3 and App. A; Oquab et al.
2024): block-wise masks (:func:`~selfsup.augment.masking.block_masking`, BEiT's) on a fraction of the images,
each masked image with its own ratio drawn uniformly from a range.

* ``probability`` (0.5 in both papers): each image is masked with this probability, otherwise left whole;
* ``ratio_range`` ((0.1, 0.5) in both papers): a masked image hides ``round(N·r)`` patches, r ~ U(range);
* ``min_patches``: the smallest block. iBOT takes ``(min(gh, gw) // 3)²`` (16 on a 14×14 grid);
  :func:`min_block_patches` computes the same for any grid, so an 8×8 grid (32 px, patch 4) gets 4 and a
  4×4 grid 1.

Masks are drawn from the global torch RNG (as :func:`block_masking`): a caller under torchrun draws them for
the global batch and keeps its rows (``components/gather.py``). Boolean (B, N), True = masked.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .masking import block_masking, check_mask_ratio


def min_block_patches(grid: tuple[int, int]) -> int:
    """iBOT's smallest block: ``(min(gh, gw) // 3)²``, at least 1."""
    return max(1, (min(grid) // 3) ** 2)


def check_ratio_range(lo: float, hi: float, key: str = "method.mask_ratio_min") -> None:
    check_mask_ratio(lo, key)
    check_mask_ratio(hi, key.replace("_min", "_max"))
    if lo > hi:
        raise ConfigError(f"{key} ({lo}) must be <= {key.replace('_min', '_max')} ({hi})")


def partial_block_masks(batch: int, grid: tuple[int, int], ratio_range: tuple[float, float],
                        probability: float = 0.5, *, min_patches: int | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, gh·gw) bool: each image masked with ``probability``, with a block mask of ratio ~ U(ratio_range).

    The per-image draws (masked or not, the ratio) come first, from the global RNG, then one block mask per
    masked image in image order; an image left whole has an all-False row.
    """
    lo, hi = ratio_range
    check_ratio_range(lo, hi)
    if not 0.0 <= probability <= 1.0:
        raise ConfigError(f"method.mask_probability must be in [0, 1], got {probability}")
    n = grid[0] * grid[1]
    chosen = torch.rand(batch) < probability
    ratios = lo + (hi - lo) * torch.rand(batch)
    smallest = min_patches if min_patches is not None else min_block_patches(grid)
    out = torch.zeros(batch, n, dtype=torch.bool)
    for b in torch.nonzero(chosen).flatten().tolist():
        out[b] = block_masking(1, grid, float(ratios[b]), min_patches=smallest)[0]
    return out.to(device)
