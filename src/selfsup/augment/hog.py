"""Histograms of oriented gradients (Dalal & Triggs 2005) per ViT patch: MaskFeat's targets (Wei et al. 2022),
computed batched on the images' device.

For images ``(B, C, H, W)``, on every channel separately (MaskFeat computes HOG on each RGB channel):

1. gradients with the fixed filters ``[-1, 0, 1]`` (horizontal) and its transpose (vertical), a grouped
   convolution over the image reflect-padded by one pixel: ``gx = x[i, j+1] − x[i, j−1]``,
   ``gy = x[i+1, j] − x[i−1, j]``;
2. magnitude ``sqrt(gx² + gy²)`` and unsigned orientation ``θ = atan2(gy, gx) mod π``, assigned to one of
   ``bins`` equal bins of width π/bins (``floor(θ·bins/π)``; no interpolation between bins);
3. per ``cell × cell`` pixels, the sum of the magnitudes falling in each bin: one histogram per cell;
4. local contrast normalisation: per ViT patch and channel, the histograms of the patch's ``(patch/cell)²``
   cells (raster order) concatenated and L2-normalised, ``v / sqrt(‖v‖² + eps²)`` (``norm="patch"``);
   ``norm="cell"`` normalises each cell's histogram instead (what MaskFeat's released code does).

Rows: ``(B, N, C·(patch/cell)²·bins)`` in patch raster order; within a row channel-major, then cell, then bin.
MaskFeat's ImageNet setting, 16-px patches with 8-px cells and 9 bins on RGB, gives 3·4·9 = 108 values per patch.
The histograms are computed in float32 (float64 stays float64) with autocast off, under ``torch.no_grad`` by the
caller: they are targets.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

HOG_NORMS = ("patch", "cell")


def _no_autocast(device_type: str):
    return torch.autocast(device_type, enabled=False) if torch.amp.is_autocast_available(device_type) \
        else nullcontext()


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel centred differences ``(gx, gy)``, each (B, C, H, W), by grouped convolutions with [-1, 0, 1]
    on the reflect-padded image (H, W >= 2)."""
    c = x.shape[1]
    k = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    wx = k.view(1, 1, 1, 3).repeat(c, 1, 1, 1)
    wy = k.view(1, 1, 3, 1).repeat(c, 1, 1, 1)
    xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
    gx = F.conv2d(xp[:, :, 1:-1, :], wx, groups=c)
    gy = F.conv2d(xp[:, :, :, 1:-1], wy, groups=c)
    return gx, gy


def cell_histograms(x: torch.Tensor, cell: int, bins: int = 9) -> torch.Tensor:
    """(B, C, H, W) → orientation histograms (B, C, H/cell, W/cell, bins): per cell, the gradient magnitudes
    summed by orientation bin (steps 1–3 of the module docstring)."""
    b, c, h, w = x.shape
    if cell < 1 or h % cell or w % cell:
        raise ValueError(f"image size {h}x{w} is not divisible by the HOG cell size {cell}")
    gx, gy = image_gradients(x)
    mag = torch.sqrt(gx * gx + gy * gy)
    theta = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned orientation in [0, π)
    idx = torch.floor(theta * bins / math.pi).long().clamp_(0, bins - 1)
    hist = torch.zeros(b, c, h, w, bins, dtype=x.dtype, device=x.device)
    hist.scatter_(-1, idx.unsqueeze(-1), mag.unsqueeze(-1))
    return hist.view(b, c, h // cell, cell, w // cell, cell, bins).sum(dim=(3, 5))


def _l2_normalize(v: torch.Tensor, eps: float) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum(dim=-1, keepdim=True) + eps * eps)


def hog_patches(x: torch.Tensor, patch: int, cell: int, bins: int = 9, *, norm: str = "patch",
                eps: float = 1e-6) -> torch.Tensor:
    """HOG rows (B, N, C·(patch/cell)²·bins) of the ``patch × patch`` patches of ``x`` (B, C, H, W), in raster
    order as :func:`~selfsup.augment.masking.patchify`'s rows; see the module docstring."""
    if norm not in HOG_NORMS:
        raise ValueError(f"HOG norm must be one of {', '.join(HOG_NORMS)}, got {norm!r}")
    if cell < 1 or patch % cell:
        raise ValueError(f"the HOG cell size {cell} does not divide the patch size {patch}")
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    with _no_autocast(x.device.type):
        hist = cell_histograms(x, cell, bins)  # (B, C, H/cell, W/cell, bins)
        if norm == "cell":
            hist = _l2_normalize(hist, eps)
        k, gh, gw = patch // cell, h // patch, w // patch
        t = hist.view(b, c, gh, k, gw, k, bins).permute(0, 2, 4, 1, 3, 5, 6)  # (B, gh, gw, C, k, k, bins)
        t = t.reshape(b, gh * gw, c, k * k * bins)
        if norm == "patch":
            t = _l2_normalize(t, eps)
        return t.reshape(b, gh * gw, c * k * k * bins)


def hog_dim(channels: int, patch: int, cell: int, bins: int = 9) -> int:
    """The length of one patch's HOG row: ``C·(patch/cell)²·bins``."""
    return channels * (patch // cell) ** 2 * bins
