"""Masks beyond MAE's and BEiT's (:mod:`selfsup.augment.masking`): SimMIM's random masking of mask units.

SimMIM (Xie et al. 2022) masks square *mask patches* that may be larger than the ViT's patches (32-px mask
patches over 16-px ViT patches on 192-px images): the patch grid is cut into ``unit × unit`` blocks of patches,
``ceil(M·r)`` of the M blocks are chosen uniformly at random per sample, and every patch of a chosen block is
masked. Masks are boolean ``(B, N)`` in raster order of the ViT patch grid, ``True`` = masked.
"""
from __future__ import annotations

import math

import torch

from .masking import check_mask_ratio


def num_masked_units(num_units: int, mask_ratio: float) -> int:
    """SimMIM's count of masked units, ``ceil(M·r)``, kept in [1, M − 1] so that something stays visible."""
    check_mask_ratio(mask_ratio)
    if num_units < 2:
        raise ValueError(f"masking needs at least 2 mask units, got {num_units}")
    return min(num_units - 1, max(1, math.ceil(num_units * mask_ratio)))


def unit_grid(grid: tuple[int, int], unit: int) -> tuple[int, int]:
    """The grid of mask units ``(gh/unit, gw/unit)`` over a ``gh × gw`` patch grid; a ValueError when ``unit``
    does not divide both sides."""
    gh, gw = grid
    if unit < 1 or gh % unit or gw % unit:
        raise ValueError(f"a {gh}x{gw} patch grid does not split into {unit}x{unit} mask units")
    return gh // unit, gw // unit


def unit_masking(batch: int, grid: tuple[int, int], unit: int, mask_ratio: float, *,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """SimMIM's mask (B, gh·gw) bool: exactly ``ceil(M·r)`` of the M ``unit × unit`` blocks of patches masked
    per sample (``unit=1``: plain random masking of patches), chosen independently per sample from the argsort
    of uniform noise (one random permutation of the units per sample)."""
    uh, uw = unit_grid(grid, unit)
    m = uh * uw
    k = num_masked_units(m, mask_ratio)
    noise = torch.rand(batch, m, device=device, generator=generator)
    chosen = torch.argsort(noise, dim=1)[:, :k]
    units = torch.zeros(batch, m, dtype=torch.bool, device=device)
    units.scatter_(1, chosen, torch.ones_like(chosen, dtype=torch.bool))
    units = units.view(batch, uh, uw).repeat_interleave(unit, dim=1).repeat_interleave(unit, dim=2)
    return units.reshape(batch, grid[0] * grid[1])
