"""A view pipeline composed from a list of transformation names: ``NamedViewPipeline(["crop", "color"], ...)``.

Built for SimCLR's augmentation ablation (Chen et al. 2020, Fig. 5): each cell of the matrix trains with one or
two transformations only. Every transformation draws its own per-sample parameters from the engine's generator.
Whatever the order of the names, they are applied in the canonical order of :data:`TRANSFORMS` (crop first,
cutout last), so ``[a, b]`` and ``[b, a]`` are the same pipeline.

Strengths (chosen so each transformation alone still makes the two views differ):

========== ==========================================================================================
crop       random resized crop, scale 0.08-1, aspect 3/4-4/3, and horizontal flip (p 0.5)
rotation   0, 90, 180 or 270 degrees, uniformly
color      colour jitter, strength s = 1 (0.8, 0.8, 0.8, 0.2), p 0.8
grayscale  p 0.5
blur       Gaussian, sigma 0.1-2, kernel 10% of the size (at least 3), p 0.5
solarize   p 0.5, threshold 0.5
sobel      Sobel gradient magnitude (deterministic)
noise      Gaussian pixel noise, std 0.02-0.1 per image
cutout     one square of side 20-50% of the image, grey (0.5), always
========== ==========================================================================================

The batched ops that :mod:`selfsup.augment.ops` lacks (cutout, Gaussian noise, Sobel) are defined here, with
per-sample parameters drawn by ``sample_*`` helpers; the quarter-turn rotation is the pretext tasks' one
(:func:`selfsup.augment.pretext.rotate90`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..registry import UnknownNameError
from . import ops
from .ops import rgb_to_grayscale, uniform
from .pretext import rotate90, sample_rotation

_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


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


# ------------------------------------------------------------------------------------------------------ noise
def gaussian_noise(x: torch.Tensor, std: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Add N(0, std[i]²) pixel noise to sample i (``std`` (B,), on the [0, 1] scale), clipped to [0, 1]."""
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return (x + noise * std.view(-1, 1, 1, 1).to(x.dtype)).clamp_(0, 1)


# ------------------------------------------------------------------------------------------------------ sobel
def sobel(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the luma, ``sqrt(gx² + gy²) / 4`` clipped to [0, 1], repeated to C channels
    (so the backbone's input is unchanged). Replicate padding keeps borders edge-free. Deterministic."""
    g = rgb_to_grayscale(x)
    kx = torch.tensor(_SOBEL_X, dtype=x.dtype, device=x.device)
    k = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
    grad = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), k)
    mag = (grad.pow(2).sum(1, keepdim=True).sqrt() / 4).clamp_(0, 1)
    return mag.expand(-1, x.shape[1], -1, -1).contiguous()


# ------------------------------------------------------------------------------------------ transformations
Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _crop(x: torch.Tensor, gen) -> torch.Tensor:
    b, _, h, w = x.shape
    boxes = ops.sample_resized_crop(b, h, w, (0.08, 1.0), (3 / 4, 4 / 3), gen, x.device)
    return ops.resized_crop(x, boxes, (h, w), ops.bernoulli(b, 0.5, gen, x.device))


def _rotation(x: torch.Tensor, gen) -> torch.Tensor:
    return rotate90(x, sample_rotation(x.shape[0], gen, x.device))


def _color(x: torch.Tensor, gen) -> torch.Tensor:
    b = x.shape[0]
    factors, order = ops.sample_color_jitter(b, 0.8, 0.8, 0.8, 0.2, gen, x.device)
    return ops.color_jitter(x, factors, order, ops.bernoulli(b, 0.8, gen, x.device))


def _grayscale(x: torch.Tensor, gen) -> torch.Tensor:
    return ops.random_grayscale(x, ops.bernoulli(x.shape[0], 0.5, gen, x.device))


def _blur(x: torch.Tensor, gen) -> torch.Tensor:
    b = x.shape[0]
    k = max(3, int(0.1 * x.shape[-1]))
    k = k if k % 2 == 1 else k + 1
    sigma = ops.uniform(b, 0.1, 2.0, gen, x.device)
    apply = ops.bernoulli(b, 0.5, gen, x.device)
    return torch.where(apply[:, None, None, None], ops.gaussian_blur(x, sigma, k), x)


def _solarize(x: torch.Tensor, gen) -> torch.Tensor:
    return ops.solarize(x, ops.bernoulli(x.shape[0], 0.5, gen, x.device))


def _sobel(x: torch.Tensor, gen) -> torch.Tensor:
    return sobel(x)


def _noise(x: torch.Tensor, gen) -> torch.Tensor:
    return gaussian_noise(x, ops.uniform(x.shape[0], 0.02, 0.1, gen, x.device), gen)


def _cutout(x: torch.Tensor, gen) -> torch.Tensor:
    b, _, h, w = x.shape
    return cutout(x, sample_cutout(b, h, w, (0.2, 0.5), gen, x.device), 0.5)


#: name → (transformation, one-line description), in the order they are applied
TRANSFORMS: dict[str, tuple[Transform, str]] = {
    "crop": (_crop, "random resized crop 0.08-1 + flip"),
    "rotation": (_rotation, "rotate by 0/90/180/270 degrees"),
    "color": (_color, "colour jitter s=1, p 0.8"),
    "grayscale": (_grayscale, "grayscale, p 0.5"),
    "blur": (_blur, "Gaussian blur sigma 0.1-2, p 0.5"),
    "solarize": (_solarize, "solarize, p 0.5"),
    "sobel": (_sobel, "Sobel gradient magnitude"),
    "noise": (_noise, "Gaussian noise std 0.02-0.1"),
    "cutout": (_cutout, "grey square, side 20-50%"),
}
ALIASES = {"colour": "color", "jitter": "color", "color-jitter": "color", "gray": "grayscale",
           "greyscale": "grayscale", "rotate": "rotation", "gaussian-noise": "noise"}


def canonical_names(names: Sequence[str]) -> list[str]:
    """Resolve aliases, drop duplicates and sort into application order; unknown names list the known ones."""
    out = set()
    for n in names:
        key = ALIASES.get(n.strip().lower(), n.strip().lower())
        if key not in TRANSFORMS:
            raise UnknownNameError(f"unknown transformation '{n}'; known: {', '.join(TRANSFORMS)}")
        out.add(key)
    return [n for n in TRANSFORMS if n in out]


class NamedViewPipeline:
    """``n_views`` views of a uint8 batch ``(B, C, H, W)``, each the composition of the named transformations
    (fresh random parameters per view and sample), resized to ``size`` and normalised with ``mean``/``std``.
    An empty name list gives the image itself (both views equal). Same call signature as MultiViewPipeline."""

    def __init__(self, names: Sequence[str], size: int, mean: Sequence[float], std: Sequence[float],
                 n_views: int = 2) -> None:
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.names = canonical_names(names)
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self._n = n_views

    @property
    def n_views(self) -> int:
        return self._n

    def view(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """One view in [0, 1] (not normalised) of a float batch in [0, 1]."""
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            b, _, h, w = x.shape
            full = torch.tensor([[0.0, 0.0, h, w]], device=x.device).expand(b, 4)
            x = ops.resized_crop(x, full, self.size)
        for n in self.names:
            x = TRANSFORMS[n][0](x, gen)
        return x

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> list[torch.Tensor]:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        m, s = self.mean.to(x.device), self.std.to(x.device)
        return [ops.normalize(self.view(x, gen), m, s) for _ in range(self._n)]
