"""Jigsaw tiles (Noroozi & Favaro 2016; PIRL, Misra & van der Maaten 2020): cut, permute and restore 3×3 grids.

Batched and device-agnostic: a batch (B, C, H, W) becomes tiles (B, G², C, h, w) in row-major grid order, each
sample gets its own permutation, and :func:`inverse_permutation` undoes it. PIRL encodes the permuted tiles; a
jigsaw pretext task would predict the permutation instead.
"""
from __future__ import annotations

import torch


def jigsaw_tiles(x: torch.Tensor, grid: int = 3) -> torch.Tensor:
    """(B, C, H, W) → (B, grid², C, H // grid, W // grid), tiles in row-major order.

    When H or W is not a multiple of ``grid`` the remainder pixels are trimmed evenly from both borders.
    """
    if x.ndim != 4:
        raise ValueError(f"jigsaw_tiles expects images (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    th, tw = h // grid, w // grid
    if th < 1 or tw < 1:
        raise ValueError(f"images of {h}x{w} px are too small for a {grid}x{grid} jigsaw")
    top, left = (h - th * grid) // 2, (w - tw * grid) // 2
    x = x[:, :, top : top + th * grid, left : left + tw * grid]
    t = x.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5)  # (B, gy, gx, C, th, tw)
    return t.reshape(b, grid * grid, c, th, tw)


def untile(tiles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`jigsaw_tiles` for row-major tiles: (B, G², C, h, w) → (B, C, G·h, G·w)."""
    b, n, c, th, tw = tiles.shape
    grid = int(round(n ** 0.5))
    if grid * grid != n:
        raise ValueError(f"untile expects a square number of tiles, got {n}")
    t = tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(b, c, grid * th, grid * tw)


def random_permutations(batch: int, n: int, generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """(batch, n) long: an independent uniformly random permutation of range(n) per row."""
    return torch.rand(batch, n, generator=generator, device=device).argsort(dim=1)


def permute_tiles(tiles: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = tiles[b, perm[b, j]]``: tiles (B, N, ...) reordered by per-sample permutations perm (B, N)."""
    if perm.shape != tiles.shape[:2]:
        raise ValueError(f"permutations {tuple(perm.shape)} do not match tiles {tuple(tiles.shape[:2])}")
    idx = perm.reshape(*perm.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return tiles.gather(1, idx)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """(B, N) → (B, N) with ``permute_tiles(permute_tiles(t, perm), inverse_permutation(perm)) == t``."""
    return perm.argsort(dim=1)
