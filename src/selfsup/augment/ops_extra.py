"""More batched augmentation ops for SimCLR's transformation ablation (Chen et al. 2020, Fig. 5 / Appendix A):
cutout, rotation by multiples of 90°, Gaussian noise and Sobel filtering.

Same conventions as :mod:`selfsup.augment.ops`: float batches ``(B, C, H, W)`` in [0, 1], per-sample parameters
as tensors ``(B,)`` / ``(B, k)`` drawn by ``sample_*`` helpers from an explicit ``torch.Generator``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import rgb_to_grayscale, uniform


# ----------------------------------------------------------------------------------------------------- cutout
def sample_cutout(n: int, height: int, width: int, size_range: tuple[float, float], gen: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """Boxes ``(n, 4)`` (top, left, h, w) in pixels: squares of side ``size_range`` × min(H, W), anywhere
    (clipped at the border, as DeVries & Taylor 2017's cutout whose centre may lie near the edge)."""
    side = torch.round(uniform(n, *size_range, gen, device) * min(height, width)).clamp_min(1)
    cy = torch.floor(torch.rand(n, generator=gen, device=device) * height)
    cx = torch.floor(torch.rand(n, generator=gen, device=device) * width)
    top = (cy - side // 2).clamp(0, height - 1)
    left = (cx - side // 2).clamp(0, width - 1)
    h = torch.minimum(side, height - top)
    w = torch.minimum(side, width - left)
    return torch.stack([top, left, h, w], dim=1)


def cutout(x: torch.Tensor, boxes: torch.Tensor, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Fill each sample's box (B, 4: top, left, h, w) with ``fill`` (a scalar, or (B, C) per-sample colours)."""
    b, c, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left, bh, bw = (v.view(-1, 1, 1) for v in boxes.to(x.device).unbind(1))
    inside = (ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)  # (B, H, W)
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    fill_t = fill_t.view(b, c, 1, 1) if fill_t.ndim == 2 else fill_t
    return torch.where(inside[:, None], fill_t, x)


# --------------------------------------------------------------------------------------------------- rotation
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


# ------------------------------------------------------------------------------------------------------ noise
def gaussian_noise(x: torch.Tensor, std: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Add N(0, std[i]²) pixel noise to sample i (``std`` (B,), on the [0, 1] scale), clipped to [0, 1]."""
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return (x + noise * std.view(-1, 1, 1, 1).to(x.dtype)).clamp_(0, 1)


# ------------------------------------------------------------------------------------------------------ sobel
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the luma, ``sqrt(gx² + gy²) / 4`` clipped to [0, 1], repeated to C channels
    (so the backbone's input is unchanged). Replicate padding keeps borders edge-free. Deterministic."""
    g = rgb_to_grayscale(x)
    kx = torch.tensor(_SOBEL_X, dtype=x.dtype, device=x.device)
    k = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
    grad = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k)
    mag = (grad.pow(2).sum(1, keepdim=True).sqrt() / 4).clamp_(0, 1)
    return mag.expand(-1, x.shape[1], -1, -1).contiguous()
