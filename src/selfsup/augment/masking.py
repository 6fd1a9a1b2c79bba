"""Patch geometry and masks for masked image modelling (MAE, BEiT, I-JEPA).

* :func:`patchify` / :func:`unpatchify`: images ``(B, C, H, W)`` ↔ patch rows ``(B, N, p·p·C)`` in raster order.
* :func:`random_masking`: MAE's per-sample random masking with the shuffle/unshuffle index trick
  (He et al. 2022): argsort of uniform noise gives a random permutation per sample; the first ``K`` indices are
  kept, and the inverse permutation (``ids_restore``) puts decoder tokens back in raster order.
* :func:`block_masking`: BEiT's block-wise masking (Bao et al. 2021): rectangles of random area and aspect ratio
  until the target number of patches is masked.
* :func:`multiblock_masking`: I-JEPA's multi-block masks (Assran et al. 2023): a few target blocks and one
  large context block with the targets removed from it, as patch indices with equal counts across the batch.
* :func:`unit_masking`: SimMIM's random masking of mask units (Xie et al. 2022), see its section below.
* :func:`partial_block_masks`: iBOT's and DINOv2's masks of the student's global views, see its section below.

Masks are boolean ``(B, N)`` with ``True`` = masked (hidden from the encoder, predicted by the loss).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError


def check_mask_ratio(ratio: float, key: str = "method.mask_ratio") -> None:
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"{key} must be in (0, 1), got {ratio}")


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, N, p·p·C)`` with N = (H/p)·(W/p) in raster order; each row is (p, p, C) flattened."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
    gh, gw = h // patch, w // patch
    x = x.reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, p·p·C)`` → ``(B, C, gh·p, gw·p)``."""
    b, n, _ = patches.shape
    gh, gw = grid
    if n != gh * gw:
        raise ValueError(f"{n} patches do not fill a {gh}x{gw} grid")
    x = patches.reshape(b, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, gh * patch, gw * patch)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (B, K) of tokens ``x`` (B, N, D) → (B, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass
class RandomMask:
    """``ids_keep`` (B, K) visible patch indices (ascending per sample is not guaranteed); ``ids_restore`` (B, N)
    the inverse permutation; ``mask`` (B, N) bool, True where masked, in raster order."""

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor

    @property
    def num_keep(self) -> int:
        return self.ids_keep.shape[1]


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """How many patches MAE keeps: ``int(N·(1 − r))``, at least 1 and at most N − 1."""
    check_mask_ratio(mask_ratio)
    return min(num_patches - 1, max(1, int(num_patches * (1.0 - mask_ratio))))


def random_masking(batch: int, num_patches: int, mask_ratio: float, *, device: torch.device | str = "cpu",
                   generator: torch.Generator | None = None) -> RandomMask:
    """Exactly ``N − int(N·(1 − r))`` masked patches per sample, chosen independently per sample."""
    keep = num_visible(num_patches, mask_ratio)
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # a random permutation per sample
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # its inverse
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask[:, :keep] = False
    mask = torch.gather(mask, 1, ids_restore)  # back to raster order
    return RandomMask(ids_shuffle[:, :keep], ids_restore, mask)


def unshuffle(tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """Tokens in shuffled order (visible first, then mask tokens) (B, N, D) → raster order (B, N, D)."""
    return gather_tokens(tokens, ids_restore)


def block_masking(batch: int, grid: tuple[int, int], mask_ratio: float, *, min_patches: int = 4,
                  aspect: tuple[float, float] = (0.3, 1 / 0.3), max_tries: int = 10,
                  generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """BEiT's block-wise mask (B, gh·gw) bool with exactly ``round(N·r)`` masked patches per sample.

    Blocks of area in [min_patches, remaining] and log-uniform aspect ratio are added until the target is met
    (BEiT, Algorithm 1); when the tries run out, the last few patches are masked at random, so that every
    sample has the same count (the loss then averages over equal numbers of positions).
    """
    check_mask_ratio(mask_ratio)
    gh, gw = grid
    n = gh * gw
    target = min(n - 1, max(1, int(round(n * mask_ratio))))
    lo, hi = math.log(aspect[0]), math.log(aspect[1])
    # A Python RNG seeded from torch's: deterministic under torch.manual_seed, and ~100x cheaper per draw than
    # scalar torch calls in this per-sample loop (it runs on the CPU while the accelerator trains).
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
    masks = np.zeros((batch, gh, gw), dtype=bool)
    for b in range(batch):
        m = masks[b]
        count = 0
        while count < target:
            added = 0
            for _ in range(max_tries):
                remaining = target - count
                area = rng.uniform(min_patches, max(remaining, min_patches))
                ratio = math.exp(rng.uniform(lo, hi))
                h = int(round(math.sqrt(area * ratio)))
                w = int(round(math.sqrt(area / ratio)))
                if not (1 <= h <= gh and 1 <= w <= gw):
                    continue
                top = rng.randint(0, gh - h)
                left = rng.randint(0, gw - w)
                block = m[top : top + h, left : left + w]
                new = int((~block).sum())
                if 0 < new <= remaining:
                    block[...] = True
                    added = new
                    break
            if added == 0:
                break
            count += added
        if count < target:  # top up at random so every sample masks exactly `target` patches
            free = np.flatnonzero(~m)
            m.reshape(-1)[rng.sample(list(free), target - count)] = True
    return torch.from_numpy(masks.reshape(batch, -1)).to(device)


# ------------------------------------------------------------------------------------------ I-JEPA multi-block
@dataclass
class MultiBlockMask:
    """I-JEPA's masks for a batch: ``context`` (B, K_c) the patch indices the context encoder sees (ascending,
    raster order) and ``targets`` (B, M, K_t) each of the M target blocks' patch indices (raster order). Per
    sample, no context index is in any target block."""

    context: torch.Tensor
    targets: torch.Tensor


def check_scale(scale: tuple[float, float], key: str) -> None:
    lo, hi = scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"{key} must be (lo, hi) with 0 < lo <= hi <= 1, got ({lo}, {hi})")


def block_size(grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float],
               generator: torch.Generator | None = None) -> tuple[int, int]:
    """One block size (h, w) for a whole batch, as I-JEPA draws it: a single uniform ``r`` sets both the area
    ``int(N·(lo + r·(hi − lo)))`` and the aspect ratio h/w ``= a_lo + r·(a_hi − a_lo)``; h and w are rounded and
    kept in [1, g − 1] (a block never spans the whole grid, as in the authors' code)."""
    gh, gw = grid
    r = float(torch.rand(1, generator=generator))
    area = int(gh * gw * (scale[0] + r * (scale[1] - scale[0])))
    ratio = aspect[0] + r * (aspect[1] - aspect[0])
    h = int(round(math.sqrt(area * ratio)))
    w = int(round(math.sqrt(area / ratio)))
    return min(max(h, 1), max(gh - 1, 1)), min(max(w, 1), max(gw - 1, 1))


def random_blocks(shape: tuple[int, ...], size: tuple[int, int], grid: tuple[int, int],
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Rectangles of ``size`` (h, w) at independent uniform positions on ``grid``: bool (*shape, gh·gw)."""
    (gh, gw), (h, w) = grid, size
    top = torch.randint(0, gh - h + 1, shape, generator=generator)
    left = torch.randint(0, gw - w + 1, shape, generator=generator)
    rows, cols = torch.arange(gh), torch.arange(gw)
    in_rows = (rows >= top.unsqueeze(-1)) & (rows < (top + h).unsqueeze(-1))  # (*shape, gh)
    in_cols = (cols >= left.unsqueeze(-1)) & (cols < (left + w).unsqueeze(-1))  # (*shape, gw)
    return (in_rows.unsqueeze(-1) & in_cols.unsqueeze(-2)).flatten(-2)


def first_indices(mask: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` True positions of each row of ``mask`` (..., N) bool, ascending → (..., k) int64.
    Every row must hold at least ``k`` True values."""
    n = mask.shape[-1]
    pos = torch.arange(n, device=mask.device)
    return torch.where(mask, pos, pos + n).argsort(dim=-1)[..., :k]


def multiblock_masking(batch: int, grid: tuple[int, int], *, num_targets: int = 4,
                       target_scale: tuple[float, float] = (0.15, 0.2),
                       target_aspect: tuple[float, float] = (0.75, 1.5),
                       context_scale: tuple[float, float] = (0.85, 1.0), min_keep: int = 4, tries: int = 20,
                       generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> MultiBlockMask:
    """I-JEPA's multi-block masks (Assran et al. 2023, Sec. 3 and the authors' ``MaskCollator``).

    - One target size per batch (:func:`block_size`, scale ``target_scale``, aspect ``target_aspect``) and one
      context size (scale ``context_scale``, aspect 1); each sample gets ``num_targets`` target blocks at
      independent uniform positions (they may overlap one another).
    - The context: a context-size block at a uniform position with every target patch removed from it. ``tries``
      positions are drawn per sample; the first that keeps more than ``min_keep`` patches is taken, else the one
      that keeps the most. The context never holds a target patch. (The authors' code instead lets the context
      overlap some targets after 20 failed tries; this only happens on tiny grids.)
    - Equal counts across the batch, the authors' convention: every target block has h·w patches; the context
      keeps its first ``K_c`` patches in raster order, ``K_c`` the smallest context in the batch (a sample's
      context loses its last patches, the batch gets one tensor).

    All draws are on the CPU from ``generator`` (None: the global torch RNG); the indices are then moved to
    ``device``. Under torchrun, draw the masks for the global batch and keep each rank's rows of both tensors
    (``components/gather.py``: ``global_rows`` / ``rank_rows``): the smallest context is then the global one.
    """
    gh, gw = grid
    if gh < 1 or gw < 1 or num_targets < 1 or tries < 1 or min_keep < 0:
        raise ValueError(f"multiblock_masking: bad grid {grid}, num_targets {num_targets}, tries {tries} "
                         f"or min_keep {min_keep}")
    check_scale(target_scale, "method.target_scale")
    check_scale(context_scale, "method.context_scale")
    if not 0.0 < target_aspect[0] <= target_aspect[1]:
        raise ConfigError(f"method.target_aspect must be (lo, hi) with 0 < lo <= hi, got {tuple(target_aspect)}")
    t_size = block_size(grid, target_scale, target_aspect, generator)
    c_size = block_size(grid, context_scale, (1.0, 1.0), generator)
    targets = random_blocks((batch, num_targets), t_size, grid, generator)  # (B, M, N)
    covered = targets.any(dim=1)  # (B, N)
    candidates = random_blocks((batch, tries), c_size, grid, generator) & ~covered.unsqueeze(1)  # (B, T, N)
    counts = candidates.sum(dim=-1)  # (B, T)
    valid = counts > min_keep
    pick = torch.where(valid.any(dim=1), valid.long().argmax(dim=1), counts.argmax(dim=1))  # first valid try
    context = candidates[torch.arange(batch), pick]  # (B, N)
    k_context = int(context.sum(dim=-1).min()) if batch else 0
    ctx_ids = first_indices(context, k_context)
    tgt_ids = first_indices(targets, t_size[0] * t_size[1])
    return MultiBlockMask(ctx_ids.to(device), tgt_ids.to(device))


# ----------------------------------------------------------------------------------------- SimMIM
# SimMIM's random masking of mask units.
#
# SimMIM (Xie et al. 2022) masks square *mask patches* that may be larger than the ViT's patches (32-px mask
# patches over 16-px ViT patches on 192-px images): the patch grid is cut into ``unit × unit`` blocks of patches,
# ``ceil(M·r)`` of the M blocks are chosen uniformly at random per sample, and every patch of a chosen block is
# masked. Masks are boolean ``(B, N)`` in raster order of the ViT patch grid, ``True`` = masked.


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


# ----------------------------------------------------------------------------------------- iBOT, DINOv2
# iBOT's and DINOv2's masks for the student's global views (Zhou et al. 2022, Sec. 3 and App. A; Oquab et al.
# 2024): block-wise masks (:func:`~selfsup.augment.masking.block_masking`, BEiT's) on a fraction of the images,
# each masked image with its own ratio drawn uniformly from a range.
#
# * ``probability`` (0.5 in both papers): each image is masked with this probability, otherwise left whole;
# * ``ratio_range`` ((0.1, 0.5) in both papers): a masked image hides ``round(N·r)`` patches, r ~ U(range);
# * ``min_patches``: the smallest block. iBOT takes ``(min(gh, gw) // 3)²`` (16 on a 14×14 grid);
#   :func:`min_block_patches` computes the same for any grid, so an 8×8 grid (32 px, patch 4) gets 4 and a
#   4×4 grid 1.
#
# Masks are drawn from the global torch RNG (as :func:`block_masking`): a caller under torchrun draws them for
# the global batch and keeps its rows (``components/gather.py``). Boolean (B, N), True = masked.


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
