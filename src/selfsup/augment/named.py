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
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..registry import UnknownNameError
from . import ops, ops_extra

Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _crop(x: torch.Tensor, gen) -> torch.Tensor:
    b, _, h, w = x.shape
    boxes = ops.sample_resized_crop(b, h, w, (0.08, 1.0), (3 / 4, 4 / 3), gen, x.device)
    return ops.resized_crop(x, boxes, (h, w), ops.bernoulli(b, 0.5, gen, x.device))


def _rotation(x: torch.Tensor, gen) -> torch.Tensor:
    return ops_extra.rotate90(x, ops_extra.sample_rotation(x.shape[0], gen, x.device))


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
    return ops_extra.sobel(x)


def _noise(x: torch.Tensor, gen) -> torch.Tensor:
    return ops_extra.gaussian_noise(x, ops.uniform(x.shape[0], 0.02, 0.1, gen, x.device), gen)


def _cutout(x: torch.Tensor, gen) -> torch.Tensor:
    b, _, h, w = x.shape
    return ops_extra.cutout(x, ops_extra.sample_cutout(b, h, w, (0.2, 0.5), gen, x.device), 0.5)


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
