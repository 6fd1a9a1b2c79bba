"""Patch geometry and masks for masked image modelling (MAE, BEiT).

* :func:`patchify` / :func:`unpatchify`: images ``(B, C, H, W)`` ↔ patch rows ``(B, N, p·p·C)`` in raster order.
* :func:`random_masking`: MAE's per-sample random masking with the shuffle/unshuffle index trick
  (He et al. 2022): argsort of uniform noise gives a random permutation per sample; the first ``K`` indices are
  kept, and the inverse permutation (``ids_restore``) puts decoder tokens back in raster order.
* :func:`block_masking`: BEiT's block-wise masking (Bao et al. 2021): rectangles of random area and aspect ratio
  until the target number of patches is masked.

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
