"""Batched transforms that turn unlabelled images into pretext-task inputs and labels.

All work on normalised float batches ``(B, C, H, W)`` and draw randomness from an explicit ``torch.Generator``:

- rotations of a batch (Gidaris et al. 2018), and one quarter turn per sample (SimCLR's rotation, Chen et al.
  2020, Fig. 5),
- a grid of tiles with gaps and random jitter (Doersch et al. 2015; Noroozi & Favaro 2016), and the gapless
  3×3 jigsaw grid with per-sample tile permutations (PIRL, Misra & van der Maaten 2020),
- permutation sets with a large minimum Hamming distance (Noroozi & Favaro 2016, Algorithm 1),
- colour dropping and colour projection against chromatic aberration (Doersch et al. 2015, Sec. 3.1),
- an overlapping patch grid (CPC, van den Oord et al. 2018; Hénaff et al. 2019).
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..components.gather import global_rows, rank_rows


# ----------------------------------------------------------------------------------------------- rotations
def rotate_all(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image at 0°, 90°, 180°, 270° (counter-clockwise): ``(4B, C, H, W)`` and labels ``(4B,)`` in 0..3.

    Rotation-major order: rows ``k·B … (k+1)·B - 1`` are the batch rotated by ``k·90°``.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    b = x.shape[0]
    out = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(b)
    return out, labels


def rotate_random(x: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One random rotation per image: ``(B, C, H, W)`` and labels ``(B,)`` in 0..3."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    # drawn for the global batch under torchrun, this rank's rows kept (components/gather.py: rank_rows)
    labels = torch.randint(0, 4, (global_rows(x.shape[0]),), generator=gen, device=gen.device if gen else x.device)
    labels = rank_rows(labels, x.shape[0]).to(x.device)
    return rotate90(x, labels), labels


def sample_rotation(n: int, gen: torch.Generator | None, device: torch.device,
                    choices: tuple[int, ...] = (0, 1, 2, 3)) -> torch.Tensor:
    """Quarter turns ``(n,)`` drawn uniformly from ``choices`` (SimCLR rotates by one of 0/90/180/270°)."""
    c = torch.tensor(choices, device=device)
    return c[torch.randint(len(choices), (n,), generator=gen, device=device)]


def rotate90(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate sample i counter-clockwise by ``k[i]`` quarter turns (square images); one masked pass per k."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate90 needs square images, got {tuple(x.shape[-2:])}")
    out = x
    for q in (1, 2, 3):
        m = (k % 4 == q)[:, None, None, None]
        out = torch.where(m, torch.rot90(x, q, dims=(-2, -1)), out)
    return out


# ---------------------------------------------------------------------------------------------- tile grids
def tile_size(image_size: int, grid: int, gap: int) -> int:
    """Side of each tile: the image is cut into ``grid``×``grid`` cells of ``image_size // grid`` px and each tile
    leaves ``gap`` px of its cell free (so neighbouring tiles are at least ``gap - 2·jitter`` px apart)."""
    cell = image_size // grid
    t = cell - gap
    if t < 1:
        raise ValueError(f"tiles are empty: {image_size} px cut into {grid}x{grid} cells of {cell} px with gap {gap}")
    return t


def tile_positions(b: int, image_size: int, grid: int, gap: int, jitter: int, gen: torch.Generator | None,
                   device: torch.device) -> torch.Tensor:
    """Top-left corners ``(B, grid², 2)`` (row, col) of the tiles, row-major over the grid.

    Each tile sits at ``gap // 2`` px into its cell plus a uniform jitter in ``[-jitter, jitter]`` px per axis,
    clipped so that it stays inside its cell: tiles of different cells never overlap.
    """
    cell = image_size // grid
    t = tile_size(image_size, grid, gap)
    margin = (image_size - grid * cell) // 2
    n = grid * grid
    base = torch.arange(grid, device=device) * cell + margin
    rows = base.repeat_interleave(grid)
    cols = base.repeat(grid)
    origin = torch.stack([rows, cols], dim=1).expand(b, n, 2)
    shift = (rank_rows(torch.randint(-jitter, jitter + 1, (global_rows(b), n, 2), generator=gen, device=device), b)
             if jitter > 0 else 0)
    offset = (torch.full((b, n, 2), gap // 2, device=device) + shift).clamp(0, cell - t)
    return origin + offset


def crop_tiles(x: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """Cut tiles of ``size`` px at ``corners`` (B, N, 2): returns ``(B, N, C, size, size)`` (one gather)."""
    b, n, _ = corners.shape
    ar = torch.arange(size, device=x.device)
    rows = (corners[..., 0:1] + ar).view(b, n, size, 1)
    cols = (corners[..., 1:2] + ar).view(b, n, 1, size)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    tiles = x.permute(0, 2, 3, 1)[bi, rows, cols]  # (B, N, size, size, C)
    return tiles.permute(0, 1, 4, 2, 3).contiguous()


def grid_tiles(x: torch.Tensor, grid: int = 3, gap: int = 2, jitter: int = 1,
               gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``grid``×``grid`` grid of tiles with gaps and jitter.

    Returns tiles ``(B, grid², C, t, t)`` (row-major) and their top-left corners ``(B, grid², 2)``.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"tile grids need square images, got {tuple(x.shape[-2:])}")
    size = x.shape[-1]
    t = tile_size(size, grid, gap)
    corners = tile_positions(x.shape[0], size, grid, gap, jitter, gen, x.device)
    return crop_tiles(x, corners, t), corners


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardise each tile on its own (zero mean, unit std over C·H·W), as Noroozi & Favaro do so that tiles
    cannot be matched by their low-level statistics. ``tiles``: (..., C, H, W)."""
    mean = tiles.mean(dim=(-3, -2, -1), keepdim=True)
    std = tiles.std(dim=(-3, -2, -1), keepdim=True)
    return (tiles - mean) / (std + eps)


# ------------------------------------------------------------------- gapless grids and tile permutations
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


# ---------------------------------------------------------------------------------------- permutation sets
@functools.lru_cache(maxsize=2)
def _all_permutations(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All n! permutations (n!, n) int8, and ``eq[i, v]`` = (perm[:, i] == v) as uint8 (n, n, n!): with it the
    number of agreeing positions with any permutation p is ``eq[arange(n), p].sum(0)`` (~1 ms for 9!)."""
    allp = np.array(list(itertools.permutations(range(n))), dtype=np.int8)
    eq = (allp.T[:, None, :] == np.arange(n, dtype=np.int8)[None, :, None]).astype(np.uint8)
    return allp, eq


def min_hamming(perms: torch.Tensor) -> int:
    """Smallest Hamming distance between two distinct rows of ``perms`` (P, N)."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


@functools.lru_cache(maxsize=8)
def _permutation_set(num: int, n: int, seed: int) -> np.ndarray:
    allp, eq = _all_permutations(n)
    pos = np.arange(n)

    def dist(j: int) -> np.ndarray:  # Hamming distance of every candidate to candidate j
        return n - eq[pos, allp[j]].sum(0, dtype=np.int16)

    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(allp)))]
    dmin = dist(chosen[0])  # distance of every candidate to the chosen set
    dmin[chosen[0]] = -1  # chosen ones stay at -1 under the running minimum
    for _ in range(num - 1):
        best = np.flatnonzero(dmin == dmin.max())
        j = int(best[rng.integers(len(best))])  # random tie-break: the set is not biased to low indices
        chosen.append(j)
        np.minimum(dmin, dist(j), out=dmin)
        dmin[j] = -1
    return allp[chosen].astype(np.int64)


def permutation_set(num: int = 100, n: int = 9, seed: int = 0) -> torch.Tensor:
    """``num`` permutations of ``n`` tiles ``(num, n)`` chosen greedily for a maximal minimum Hamming distance.

    Noroozi & Favaro 2016 (Algorithm 1) pick, one at a time, the permutation farthest from those chosen so far;
    here "farthest" is the largest *minimum* distance to the set (ties broken at random with ``seed``), which keeps
    every pair of classes far apart. 9 tiles: 9! = 362,880 candidates; P = 100 takes ~1 s, P = 1000 ~3 s.
    """
    if n > 9:
        raise ValueError(f"permutation sets are enumerated exhaustively; n must be <= 9 tiles, got {n}")
    if not 2 <= num <= math.factorial(n):
        raise ValueError(f"the number of permutations must be in [2, {math.factorial(n)}] for {n} tiles, got {num}")
    return torch.from_numpy(_permutation_set(num, n, seed).copy())


# ------------------------------------------------------------------------------- chromatic aberration guards
def color_drop(x: torch.Tensor, gen: torch.Generator | None = None, noise_std: float = 0.01) -> torch.Tensor:
    """Keep one random colour channel per sample and replace the others by Gaussian noise of ``noise_std``.

    ``x``: (B, C, H, W) normalised. Doersch et al. 2015 drop 2 of 3 channels per patch so that chromatic
    aberration (a colour shift that grows towards the image borders) cannot reveal a patch's position.
    """
    b, c = x.shape[:2]
    if c == 1:
        return x
    dev = gen.device if gen else x.device
    keep = rank_rows(torch.randint(0, c, (global_rows(b),), generator=gen, device=dev), b).to(x.device)
    noise = rank_rows(torch.randn((global_rows(b), *x.shape[1:]), generator=gen, device=dev), b).to(x.device)
    noise = noise * noise_std
    mask = F.one_hot(keep, c).to(x.dtype).view(b, c, 1, 1)
    return x * mask + noise * (1 - mask)


_GREEN_MAGENTA = (-1.0, 2.0, -1.0)


def color_project(x: torch.Tensor) -> torch.Tensor:
    """Remove each pixel's component along the green-magenta axis ``(-1, 2, -1)/√6`` (Doersch et al. 2015,
    "projection"): chromatic aberration mostly shifts green against magenta. (B, 3, H, W) → same shape."""
    if x.shape[1] != 3:
        return x
    a = torch.tensor(_GREEN_MAGENTA, dtype=x.dtype, device=x.device)
    a = a / a.norm()
    return x - torch.einsum("bchw,c->bhw", x, a)[:, None] * a.view(1, 3, 1, 1)


# --------------------------------------------------------------------------------------- CPC patch grids
def patch_grid(x: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """Overlapping patches ``(B, R, W, C, patch, patch)`` on a regular grid with ``stride`` (CPC's input).

    Hénaff et al. 2019 cut a 256 px image into 7×7 patches of 64 px with stride 32; at 32 px the same layout is
    patch 8, stride 4.
    """
    b, c, h, w = x.shape
    if patch > min(h, w):
        raise ValueError(f"patch size {patch} is larger than the image ({h}x{w})")
    rows = (h - patch) // stride + 1
    cols = (w - patch) // stride + 1
    u = F.unfold(x, kernel_size=patch, stride=stride)  # (B, C·p·p, R·W)
    return u.view(b, c, patch, patch, rows, cols).permute(0, 4, 5, 1, 2, 3).contiguous()
